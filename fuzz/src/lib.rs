//! What the fuzz targets run: the frame reader and the decoder of every message type that
//! crosses the network, fed arbitrary bytes. Anything but a panic (or a sanitizer report) is
//! fine; a decoded message must also survive re-encoding unchanged.

use fragmenta_wire::handshake::{Hello, HelloReply};
use fragmenta_wire::messages::{Control, FetchReply, Request, Results, StreamHeader};
use fragmenta_wire::{
    decode, encode, read_frame, read_header, read_payload_into, write_frame, FrameLimits,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

/// Runs a future over in-memory streams, which never wait, to completion in one poll.
pub fn poll_once<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory stream never waits"),
    }
}

/// A stream that hands out at most `step` bytes per read, as a network does.
pub struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl<'a> Trickle<'a> {
    /// `data`, `step` bytes at a time (at least one).
    pub fn new(data: &'a [u8], step: usize) -> Self {
        Trickle {
            data,
            step: step.max(1),
        }
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Re-encodes a decoded message: the encoding decodes again to the same encoding.
fn stable<M: Serialize + DeserializeOwned>(msg: &M) {
    let bytes = encode(msg).expect("a decoded message encodes");
    let again: M = decode(&bytes, bytes.len()).expect("an encoded message decodes");
    assert_eq!(
        encode(&again).expect("encodes"),
        bytes,
        "re-encoding changed the message"
    );
}

/// Reads frames of `M` until the stream ends or fails, first whole, then header and payload
/// separately into a caller's buffer.
fn frames_of<M: Serialize + DeserializeOwned>(bytes: &[u8], limits: &FrameLimits, step: usize) {
    let mut r = Trickle::new(bytes, step);
    while let Ok(Some((msg, payload))) = poll_once(read_frame::<_, M>(&mut r, limits)) {
        assert!(payload.len() as u64 <= limits.max_payload);
        stable(&msg);
        let mut out = Vec::new();
        poll_once(write_frame(&mut out, &msg, &payload)).expect("a decoded frame writes");
        let (again, p) = poll_once(read_frame::<_, M>(&mut out.as_slice(), limits))
            .expect("a written frame reads")
            .expect("one frame");
        assert_eq!(encode(&again).ok(), encode(&msg).ok());
        assert_eq!(p, payload);
    }
    let mut r = bytes;
    while let Ok(Some((msg, len))) = poll_once(read_header::<_, M>(&mut r, limits)) {
        assert!(len <= limits.max_payload);
        stable(&msg);
        // A caller sizes its buffer from the announced length; stop where the input cannot
        // fill it (that read would only report the truncation).
        if len > r.len() as u64 {
            break;
        }
        let mut buf = vec![0u8; len as usize];
        if poll_once(read_payload_into(&mut r, &mut buf)).is_err() {
            break;
        }
    }
}

/// The frame reader: byte 0 picks the message type and how many bytes each read returns,
/// byte 1 the limits; the rest is the stream.
pub fn frames(data: &[u8]) {
    let [sel, lim, rest @ ..] = data else {
        return;
    };
    let limits = if lim & 1 == 0 {
        FrameLimits::default()
    } else {
        FrameLimits {
            max_header: 1 + u32::from(lim >> 1) * 8,
            max_payload: u64::from(lim >> 1) * 64,
        }
    };
    let step = 1 + usize::from(sel >> 3);
    match sel & 7 {
        0 => frames_of::<StreamHeader>(rest, &limits, step),
        1 => frames_of::<Control>(rest, &limits, step),
        2 => {
            frames_of::<Results>(rest, &limits, step);
            if let Ok(Some((r, _))) = poll_once(read_header::<_, Results>(&mut &rest[..], &limits))
            {
                let _ = r.payload_len();
            }
        }
        3 => frames_of::<Hello>(rest, &limits, step),
        4 => frames_of::<HelloReply>(rest, &limits, step),
        5 => frames_of::<Request>(rest, &limits, step),
        6 => frames_of::<FetchReply>(rest, &limits, step),
        _ => {
            // A control stream as the runtime reads it: a stream header, then control frames.
            let mut r = Trickle::new(rest, step);
            if let Ok(Some((StreamHeader::Control, 0))) =
                poll_once(read_header::<_, StreamHeader>(&mut r, &limits))
            {
                while let Ok(Some((msg, _))) = poll_once(read_frame::<_, Control>(&mut r, &limits))
                {
                    stable(&msg);
                }
            }
        }
    }
}

fn decoded<M: Serialize + DeserializeOwned>(bytes: &[u8], limit: usize) {
    if let Ok(msg) = decode::<M>(bytes, limit) {
        stable(&msg);
    }
}

/// The decoders: byte 0 picks the message type and the size limit; the rest is the message.
pub fn messages(data: &[u8]) {
    let [sel, rest @ ..] = data else {
        return;
    };
    let limit = if sel >> 3 == 0 {
        usize::MAX
    } else {
        usize::from(sel >> 3) * 8
    };
    match sel & 7 {
        0 => decoded::<StreamHeader>(rest, limit),
        1 => decoded::<Control>(rest, limit),
        2 => {
            if let Ok(r) = decode::<Results>(rest, limit) {
                let _ = r.payload_len();
                stable(&r);
            }
        }
        3 => decoded::<Hello>(rest, limit),
        4 => decoded::<HelloReply>(rest, limit),
        5 => decoded::<Request>(rest, limit),
        6 => decoded::<FetchReply>(rest, limit),
        _ => decoded::<fragmenta_job::JobParams>(rest, limit),
    }
}
