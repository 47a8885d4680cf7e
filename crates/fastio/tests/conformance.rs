//! One conformance suite, written once, generic over the [`FastIo`] implementation, and run
//! against the in-process [`LocalContext`] and the cross-process [`RemoteContext`] (talking to a
//! [`ContextServer`] in this process over a real Unix socket, with memfds passed by
//! `SCM_RIGHTS` and mapped separately).

use fragmenta_fastio::{
    ContextServer, ElementType, FastIo, FastIoError, LocalContext, RemoteContext, MAX_DIMS,
};

const MIB: u64 = 1 << 20;

/// How a test gets contexts of one implementation.
trait Fixture {
    type Ctx: FastIo;
    fn new(capacity: u64) -> Self;
    /// The context under test.
    fn ctx(&self) -> &Self::Ctx;
    /// Another user of the same node context (another connection for the remote case).
    fn other(&self) -> Self::Ctx;
}

struct Local(LocalContext);

impl Fixture for Local {
    type Ctx = LocalContext;
    fn new(capacity: u64) -> Self {
        Local(LocalContext::new(capacity))
    }
    fn ctx(&self) -> &LocalContext {
        &self.0
    }
    fn other(&self) -> LocalContext {
        self.0.clone()
    }
}

struct Remote {
    client: RemoteContext,
    server: ContextServer,
    _dir: tempfile::TempDir,
}

impl Fixture for Remote {
    type Ctx = RemoteContext;
    fn new(capacity: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server =
            ContextServer::start(dir.path().join("run").join("fastio.sock"), capacity).unwrap();
        let client = RemoteContext::connect(server.socket_path()).unwrap();
        Remote {
            client,
            server,
            _dir: dir,
        }
    }
    fn ctx(&self) -> &RemoteContext {
        &self.client
    }
    fn other(&self) -> RemoteContext {
        RemoteContext::connect(self.server.socket_path()).unwrap()
    }
}

/// Instantiates each generic test for both implementations.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[test] fn $name() { super::$name::<super::Local>(); })*
        }
        mod remote {
            $(#[test] fn $name() { super::$name::<super::Remote>(); })*
        }
    };
}

conformance!(
    typed_roundtrip_through_publish_and_get,
    get_unknown_name_fails,
    invalid_names_are_rejected,
    publish_under_taken_name_fails_and_under_two_names_works,
    read_while_written_conflicts,
    write_while_read_conflicts,
    two_writers_conflict,
    many_readers_coexist,
    map_and_publish_after_free_fail,
    get_after_free_fails,
    capacity_is_enforced_and_returns_after_release,
    published_memory_outlives_handles_until_freed,
    wrong_element_type_view_fails,
    dims_mismatch_is_rejected,
    metadata_is_immutable_after_publish,
    writes_are_visible_to_other_users,
    zero_sized_allocation_works,
);

fn typed_roundtrip_through_publish_and_get<F: Fixture>() {
    let f = F::new(MIB);
    let ctx = f.ctx();
    let mut a = ctx.create(6 * 4).unwrap();
    assert_eq!((a.size(), a.element_type(), a.dims()), (24, None, &[][..]));
    a.set_type_and_dimensions(ElementType::F32, &[2, 3])
        .unwrap();
    {
        let mut w = a.map_write().unwrap();
        for (i, x) in w.as_mut_slice::<f32>().unwrap().iter_mut().enumerate() {
            *x = i as f32 * 1.5;
        }
    }
    ctx.publish(&a, "matrix").unwrap();
    let b = f.other().get("matrix").unwrap();
    assert_eq!(b.element_type(), Some(ElementType::F32));
    assert_eq!(b.dims(), &[2, 3]);
    assert_eq!(b.size(), 24);
    let r = b.map_read().unwrap();
    assert_eq!(
        r.as_slice::<f32>().unwrap(),
        &[0.0, 1.5, 3.0, 4.5, 6.0, 7.5]
    );
    assert_eq!(r.len(), 24);
}

fn get_unknown_name_fails<F: Fixture>() {
    let f = F::new(MIB);
    assert_eq!(
        f.ctx().get("nope").unwrap_err(),
        FastIoError::UnknownName("nope".into())
    );
}

fn invalid_names_are_rejected<F: Fixture>() {
    let f = F::new(MIB);
    let a = f.ctx().create(8).unwrap();
    assert_eq!(f.ctx().publish(&a, ""), Err(FastIoError::InvalidName));
    let long = "x".repeat(fragmenta_fastio::MAX_NAME_LEN + 1);
    assert_eq!(f.ctx().publish(&a, &long), Err(FastIoError::InvalidName));
    assert_eq!(f.ctx().get("").unwrap_err(), FastIoError::InvalidName);
    // The context still works after refusing.
    f.ctx().publish(&a, "ok").unwrap();
}

fn publish_under_taken_name_fails_and_under_two_names_works<F: Fixture>() {
    let f = F::new(MIB);
    let ctx = f.ctx();
    let a = ctx.create(16).unwrap();
    let b = ctx.create(16).unwrap();
    ctx.publish(&a, "x").unwrap();
    assert_eq!(
        ctx.publish(&b, "x"),
        Err(FastIoError::NameTaken("x".into()))
    );
    // Another user cannot take it either.
    let other = f.other();
    let c = other.create(16).unwrap();
    assert_eq!(
        other.publish(&c, "x"),
        Err(FastIoError::NameTaken("x".into()))
    );
    // The same memory under a second name.
    ctx.publish(&a, "y").unwrap();
    let gx = other.get("x").unwrap();
    let gy = other.get("y").unwrap();
    gx.map_write().unwrap()[3] = 99;
    assert_eq!(gy.map_read().unwrap()[3], 99);
    assert_eq!(ctx.stats().unwrap().publications, 2);
}

fn read_while_written_conflicts<F: Fixture>() {
    let f = F::new(MIB);
    let a = f.ctx().create(64).unwrap();
    f.ctx().publish(&a, "m").unwrap();
    let other = f.other();
    let b = other.get("m").unwrap();
    let w = a.map_write().unwrap();
    assert_eq!(b.map_read().unwrap_err(), FastIoError::MapConflict);
    // Also through the writing handle itself.
    assert_eq!(a.map_read().unwrap_err(), FastIoError::MapConflict);
    drop(w);
    b.map_read().unwrap();
}

fn write_while_read_conflicts<F: Fixture>() {
    let f = F::new(MIB);
    let a = f.ctx().create(64).unwrap();
    f.ctx().publish(&a, "m").unwrap();
    let other = f.other();
    let b = other.get("m").unwrap();
    let r = b.map_read().unwrap();
    assert_eq!(a.map_write().unwrap_err(), FastIoError::MapConflict);
    assert_eq!(b.map_write().unwrap_err(), FastIoError::MapConflict);
    drop(r);
    a.map_write().unwrap();
}

fn two_writers_conflict<F: Fixture>() {
    let f = F::new(MIB);
    let a = f.ctx().create(64).unwrap();
    f.ctx().publish(&a, "m").unwrap();
    let other = f.other();
    let b = other.get("m").unwrap();
    let w = b.map_write().unwrap();
    assert_eq!(a.map_write().unwrap_err(), FastIoError::MapConflict);
    assert_eq!(b.map_write().unwrap_err(), FastIoError::MapConflict);
    drop(w);
    let _w = a.map_write().unwrap();
}

fn many_readers_coexist<F: Fixture>() {
    let f = F::new(MIB);
    let a = f.ctx().create(64).unwrap();
    f.ctx().publish(&a, "m").unwrap();
    let other = f.other();
    let b = other.get("m").unwrap();
    let r1 = a.map_read().unwrap();
    let r2 = a.map_read().unwrap();
    let r3 = b.map_read().unwrap();
    drop(r1);
    // Still two readers: writing stays refused until all are gone.
    assert_eq!(b.map_write().unwrap_err(), FastIoError::MapConflict);
    drop((r2, r3));
    b.map_write().unwrap();
}

fn map_and_publish_after_free_fail<F: Fixture>() {
    let f = F::new(MIB);
    let a = f.ctx().create(64).unwrap();
    f.ctx().publish(&a, "m").unwrap();
    let other = f.other();
    let b = other.get("m").unwrap();
    a.free().unwrap();
    assert_eq!(b.map_read().unwrap_err(), FastIoError::Freed);
    assert_eq!(b.map_write().unwrap_err(), FastIoError::Freed);
    assert_eq!(other.publish(&b, "again"), Err(FastIoError::Freed));
    // Metadata is still readable through the surviving handle.
    assert_eq!(b.size(), 64);
    // The memory is returned once the last handle goes.
    assert_eq!(f.ctx().stats().unwrap().used, 64);
    drop(b);
    assert_eq!(f.ctx().stats().unwrap().used, 0);
}

fn get_after_free_fails<F: Fixture>() {
    let f = F::new(MIB);
    let a = f.ctx().create(64).unwrap();
    f.ctx().publish(&a, "m").unwrap();
    f.ctx().publish(&a, "n").unwrap();
    let b = f.other().get("m").unwrap();
    b.free().unwrap();
    assert_eq!(
        f.ctx().get("m").unwrap_err(),
        FastIoError::UnknownName("m".into())
    );
    assert_eq!(
        f.ctx().get("n").unwrap_err(),
        FastIoError::UnknownName("n".into())
    );
    assert_eq!(f.ctx().stats().unwrap().publications, 0);
    // The name can be reused.
    let c = f.ctx().create(8).unwrap();
    f.ctx().publish(&c, "m").unwrap();
}

fn capacity_is_enforced_and_returns_after_release<F: Fixture>() {
    let f = F::new(MIB);
    let ctx = f.ctx();
    let a = ctx.create(MIB / 2).unwrap();
    let b = ctx.create(MIB / 2).unwrap();
    assert_eq!(
        ctx.create(1).unwrap_err(),
        FastIoError::CapacityExceeded {
            requested: 1,
            available: 0
        }
    );
    drop(a);
    assert_eq!(
        ctx.create(MIB).unwrap_err(),
        FastIoError::CapacityExceeded {
            requested: MIB,
            available: MIB / 2
        }
    );
    b.release();
    let s = ctx.stats().unwrap();
    assert_eq!((s.used, s.allocations, s.handles), (0, 0, 0));
    let _whole = ctx.create(MIB).unwrap();
    assert_eq!(ctx.stats().unwrap().available(), 0);
}

fn published_memory_outlives_handles_until_freed<F: Fixture>() {
    let f = F::new(MIB);
    let a = f.ctx().create(4096).unwrap();
    a.map_write().unwrap()[0] = 7;
    f.ctx().publish(&a, "kept").unwrap();
    drop(a);
    assert_eq!(
        f.ctx().stats().unwrap().used,
        4096,
        "publication keeps the memory"
    );
    let b = f.other().get("kept").unwrap();
    assert_eq!(b.map_read().unwrap()[0], 7);
    b.free().unwrap();
    assert_eq!(f.ctx().stats().unwrap().used, 0);
}

fn wrong_element_type_view_fails<F: Fixture>() {
    let f = F::new(MIB);
    let mut a = f.ctx().create(16).unwrap();
    assert_eq!(
        a.map_read().unwrap().as_slice::<u8>().unwrap_err(),
        FastIoError::WrongElementType {
            actual: None,
            requested: ElementType::U8
        }
    );
    a.set_type_and_dimensions(ElementType::F32, &[4]).unwrap();
    assert_eq!(
        a.map_read().unwrap().as_slice::<u32>().unwrap_err(),
        FastIoError::WrongElementType {
            actual: Some(ElementType::F32),
            requested: ElementType::U32
        }
    );
    let mut w = a.map_write().unwrap();
    assert_eq!(
        w.as_mut_slice::<f64>().unwrap_err(),
        FastIoError::WrongElementType {
            actual: Some(ElementType::F32),
            requested: ElementType::F64
        }
    );
    assert_eq!(w.as_mut_slice::<f32>().unwrap().len(), 4);
    drop(w);
    // f16 views work for F16 memory.
    let mut h = f.ctx().create(8).unwrap();
    h.set_type_and_dimensions(ElementType::F16, &[2, 2])
        .unwrap();
    h.map_write().unwrap().as_mut_slice::<half::f16>().unwrap()[3] = half::f16::from_f32(2.5);
    assert_eq!(
        h.map_read().unwrap().as_slice::<half::f16>().unwrap()[3].to_f32(),
        2.5
    );
}

fn dims_mismatch_is_rejected<F: Fixture>() {
    let f = F::new(MIB);
    let mut a = f.ctx().create(12).unwrap();
    assert_eq!(
        a.set_type_and_dimensions(ElementType::F32, &[2, 2]),
        Err(FastIoError::DimsMismatch {
            size: 12,
            element_type: ElementType::F32,
            dims: vec![2, 2]
        })
    );
    assert!(matches!(
        a.set_type_and_dimensions(ElementType::U64, &[u64::MAX, 2]),
        Err(FastIoError::DimsMismatch { .. })
    ));
    assert_eq!(
        a.set_type_and_dimensions(ElementType::U8, &[1; MAX_DIMS + 1]),
        Err(FastIoError::TooManyDimensions)
    );
    // A failed call leaves the metadata untouched; a fitting one succeeds.
    assert_eq!(a.element_type(), None);
    a.set_type_and_dimensions(ElementType::U16, &[3, 2])
        .unwrap();
    a.set_type_and_dimensions(ElementType::I32, &[3]).unwrap();
    assert_eq!(
        (a.element_type(), a.dims()),
        (Some(ElementType::I32), &[3][..])
    );
}

fn metadata_is_immutable_after_publish<F: Fixture>() {
    let f = F::new(MIB);
    let mut a = f.ctx().create(16).unwrap();
    a.set_type_and_dimensions(ElementType::U32, &[4]).unwrap();
    f.ctx().publish(&a, "v").unwrap();
    assert!(a.is_published());
    assert_eq!(
        a.set_type_and_dimensions(ElementType::U8, &[16]),
        Err(FastIoError::MetadataImmutable)
    );
    // A handle from `get` is a mutable copy; republishing it does not change "v".
    let other = f.other();
    let mut g = other.get("v").unwrap();
    g.set_type_and_dimensions(ElementType::U16, &[2, 4])
        .unwrap();
    other.publish(&g, "v16").unwrap();
    let v = f.ctx().get("v").unwrap();
    assert_eq!(
        (v.element_type(), v.dims()),
        (Some(ElementType::U32), &[4][..])
    );
    let v16 = f.ctx().get("v16").unwrap();
    assert_eq!(
        (v16.element_type(), v16.dims()),
        (Some(ElementType::U16), &[2, 4][..])
    );
}

fn writes_are_visible_to_other_users<F: Fixture>() {
    let f = F::new(MIB);
    let mut a = f.ctx().create(8 * 1000).unwrap();
    a.set_type_and_dimensions(ElementType::U64, &[1000])
        .unwrap();
    f.ctx().publish(&a, "big").unwrap();
    let other = f.other();
    let b = other.get("big").unwrap();
    a.map_write().unwrap().as_mut_slice::<u64>().unwrap()[999] = 0xdead_beef;
    assert_eq!(
        b.map_read().unwrap().as_slice::<u64>().unwrap()[999],
        0xdead_beef
    );
    b.map_write().unwrap().as_mut_slice::<u64>().unwrap()[0] = 42;
    assert_eq!(a.map_read().unwrap().as_slice::<u64>().unwrap()[0], 42);
}

fn zero_sized_allocation_works<F: Fixture>() {
    let f = F::new(MIB);
    let mut a = f.ctx().create(0).unwrap();
    a.set_type_and_dimensions(ElementType::F64, &[0, 5])
        .unwrap();
    f.ctx().publish(&a, "empty").unwrap();
    let b = f.other().get("empty").unwrap();
    assert_eq!(
        b.map_read().unwrap().as_slice::<f64>().unwrap(),
        &[] as &[f64]
    );
}

#[test]
fn publishing_another_contexts_allocation_fails() {
    let one = LocalContext::new(MIB);
    let two = LocalContext::new(MIB);
    let a = one.create(8).unwrap();
    assert_eq!(two.publish(&a, "a"), Err(FastIoError::ForeignAllocation));

    let f = Remote::new(MIB);
    let other = f.other();
    let b = f.ctx().create(8).unwrap();
    assert_eq!(other.publish(&b, "b"), Err(FastIoError::ForeignAllocation));
    assert_eq!(one.publish(&b, "b"), Err(FastIoError::ForeignAllocation));
}

#[test]
fn in_process_view_of_a_server_shares_the_context() {
    let f = Remote::new(MIB);
    let local = f.server.context();
    let mut a = local.create(8).unwrap();
    a.set_type_and_dimensions(ElementType::I64, &[1]).unwrap();
    a.map_write().unwrap().as_mut_slice::<i64>().unwrap()[0] = -5;
    local.publish(&a, "from-runtime").unwrap();
    let b = f.ctx().get("from-runtime").unwrap();
    let r = b.map_read().unwrap();
    assert_eq!(r.as_slice::<i64>().unwrap(), &[-5]);
    // Locks are shared between the in-process view and clients.
    assert_eq!(a.map_write().unwrap_err(), FastIoError::MapConflict);
    drop(r);
    drop(b);
    assert_eq!(f.server.stats().used, 8);
}

#[test]
fn dropping_a_client_releases_its_handles_and_locks() {
    let f = Remote::new(MIB);
    let client = f.other();
    let a = client.create(1000).unwrap();
    client.publish(&a, "shared").unwrap();
    let _private = client.create(2000).unwrap();
    let mine = f.ctx().get("shared").unwrap();
    assert_eq!(f.server.stats().used, 3000);
    let w = a.map_write().unwrap();
    assert_eq!(mine.map_read().unwrap_err(), FastIoError::MapConflict);
    // Leak the guard so the client never unmaps, then drop the whole client.
    std::mem::forget(w);
    drop((a, _private, client));
    wait_for(|| f.server.connections() == 1);
    mine.map_write().unwrap();
    assert_eq!(
        f.server.stats().used,
        1000,
        "private memory reclaimed, publication kept"
    );
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
