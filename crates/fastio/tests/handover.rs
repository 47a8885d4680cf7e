//! Handing memory over from a client process to the context's owner: one copy in, taken out by
//! name, the memory back in the pool for the next hand-over, nothing left behind.

use fragmenta_fastio::{ContextServer, FastIo, FastIoError, RemoteContext};

const MIB: u64 = 1 << 20;

fn server() -> (tempfile::TempDir, ContextServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = ContextServer::start(dir.path().join("run").join("ctx.sock"), 64 * MIB).unwrap();
    (dir, server)
}

#[test]
fn handed_over_memory_is_taken_in_place_and_reused_from_the_pool() {
    let (_dir, server) = server();
    let local = server.context();
    let client = RemoteContext::connect(server.socket_path()).unwrap();
    let data: Vec<u8> = (0..(3 * MIB / 2) as usize)
        .map(|i| (i % 251) as u8)
        .collect();
    client.hand_over("shm/1/a", &data, 2 * MIB).unwrap();
    let s = server.stats();
    assert_eq!((s.used, s.publications, s.handles), (2 * MIB, 1, 0));
    // Taken: a handle, the publication gone, the bytes in place.
    let taken = local.take("shm/1/a").unwrap();
    assert_eq!(taken.size(), 2 * MIB);
    assert!(matches!(
        local.get("shm/1/a"),
        Err(FastIoError::UnknownName(_))
    ));
    let read = taken.into_shared_read().unwrap();
    assert_eq!(&read.as_ref()[..data.len()], &data[..]);
    let addr = read.as_bytes().as_ptr() as usize;
    drop(read);
    let s = server.stats();
    assert_eq!((s.used, s.publications, s.pooled), (0, 0, 2 * MIB));
    // The next hand-over of that size gets the pooled memory, and the receiver finds it
    // still mapped where it was.
    client.hand_over("shm/1/b", &data[..10], 2 * MIB).unwrap();
    assert_eq!(server.stats().pooled, 0);
    let again = local.take("shm/1/b").unwrap().into_shared_read().unwrap();
    assert_eq!(again.as_bytes().as_ptr() as usize, addr);
    assert_eq!(&again.as_bytes()[..10], &data[..10]);
    drop(again);
    assert_eq!(server.stats().used, 0);
}

#[test]
fn hand_over_errors_leave_nothing_and_a_prefix_is_withdrawn_at_once() {
    let (_dir, server) = server();
    let local = server.context();
    let client = RemoteContext::connect(server.socket_path()).unwrap();
    assert_eq!(
        client.hand_over("x", &[0; 10], 4),
        Err(FastIoError::DataTooLarge { len: 10, size: 4 })
    );
    assert!(matches!(
        client.hand_over("x", &[0; 10], 128 * MIB),
        Err(FastIoError::CapacityExceeded { .. })
    ));
    client.hand_over("peer/2/job/0", &[1; 10], MIB).unwrap();
    client.hand_over("peer/2/job/1", &[2; 10], MIB).unwrap();
    client.hand_over("peer/3/job/0", &[3; 10], MIB).unwrap();
    assert_eq!(
        client.hand_over("peer/2/job/1", &[2; 10], MIB),
        Err(FastIoError::NameTaken("peer/2/job/1".into()))
    );
    assert_eq!(server.stats().used, 3 * MIB);
    // The client's connection going away leaves the publications (the context owns them).
    drop(client);
    assert_eq!(server.stats().publications, 3);
    assert_eq!(local.withdraw_prefix("peer/2/"), 2);
    let s = server.stats();
    assert_eq!((s.used, s.publications), (MIB, 1));
    assert_eq!(local.withdraw_prefix("peer/3/"), 1);
    let s = server.stats();
    assert_eq!((s.used, s.publications, s.handles), (0, 0, 0));
}

#[test]
fn get_to_read_keeps_the_mapping_for_the_next_get_of_the_same_memory() {
    let (_dir, server) = server();
    let local = server.context();
    let client = RemoteContext::connect(server.socket_path()).unwrap();
    let a = local.create(2 * MIB).unwrap();
    a.map_write().unwrap().fill(7);
    local.publish(&a, "p").unwrap();
    drop(a);
    let first = client.get_to_read("p").unwrap();
    let addr = {
        let read = first.map_read().unwrap();
        assert!(read.as_bytes().iter().all(|&b| b == 7));
        read.as_bytes().as_ptr() as usize
    };
    drop(first);
    // The handle is gone, its mapping is not.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        maps.lines().any(|l| l.starts_with(&format!("{addr:x}-"))),
        "the memory is still mapped at {addr:x}"
    );
    // No handle is left on the owner's side; the publication stays.
    let s = server.stats();
    assert_eq!((s.handles, s.publications), (0, 1));
    // The owner refills the memory; the next get finds it mapped where it was, new bytes in it.
    local.get("p").unwrap().map_write().unwrap().fill(9);
    let again = client.get_to_read("p").unwrap();
    let read = again.map_read().unwrap();
    assert_eq!(read.as_bytes().as_ptr() as usize, addr);
    assert!(read.as_bytes().iter().all(|&b| b == 9));
    drop(read);
    drop(again);
    // A name never published is the same typed error as `get`'s.
    assert!(matches!(
        client.get_to_read("nope"),
        Err(FastIoError::UnknownName(_))
    ));
}

#[test]
fn a_hand_over_filled_in_place_is_taken_whole_and_one_dropped_unfinished_returns() {
    let (_dir, server) = server();
    let local = server.context();
    let client = RemoteContext::connect(server.socket_path()).unwrap();
    let mut h = client.begin_hand_over(2 * MIB).unwrap();
    assert_eq!(h.size(), 2 * MIB);
    h.bytes_mut()[..4].copy_from_slice(b"abcd");
    assert_eq!(&h.bytes()[..4], b"abcd");
    // Not published yet: only the client's handle holds it, write-locked.
    let s = server.stats();
    assert_eq!((s.used, s.publications, s.handles), (2 * MIB, 0, 1));
    assert!(matches!(
        local.get("in-place"),
        Err(FastIoError::UnknownName(_))
    ));
    h.finish("in-place").unwrap();
    let s = server.stats();
    assert_eq!((s.publications, s.handles), (1, 0));
    let taken = local.take("in-place").unwrap().into_shared_read().unwrap();
    assert_eq!(&taken.as_bytes()[..4], b"abcd");
    drop(taken);
    // Dropped unfinished: nothing published, the memory back in the pool.
    let h = client.begin_hand_over(2 * MIB).unwrap();
    drop(h);
    let s = server.stats();
    assert_eq!(
        (s.used, s.publications, s.handles, s.pooled),
        (0, 0, 0, 2 * MIB)
    );
    // An invalid name publishes nothing and gives the memory back as well.
    let h = client.begin_hand_over(MIB).unwrap();
    assert!(matches!(h.finish(""), Err(FastIoError::InvalidName)));
    assert_eq!(server.stats().used, 0);
}
