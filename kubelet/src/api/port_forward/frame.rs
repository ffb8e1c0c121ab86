//! SPDY/3.1 frames, as far as `portforward.k8s.io` uses them: streams opened by the client
//! (SYN_STREAM), answered (SYN_REPLY), fed (data, with FIN for a half-close) and reset
//! (RST_STREAM), plus PING and GOAWAY for the connection. Header blocks stay compressed here;
//! [`super::headers`] owns the connection's zlib streams. SETTINGS, HEADERS and WINDOW_UPDATE
//! are read and dropped: Kubernetes' SPDY peer (spdystream) does no flow control, so neither
//! side waits for a window.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

const VERSION: u32 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
const CONTROL_BIT: u32 = 0x8000_0000;
const STREAM_ID_MASK: u32 = 0x7fff_ffff;
const LENGTH_MASK: u32 = 0x00ff_ffff;
const HEADER_LEN: usize = 8;

/// The largest frame payload read. kubectl writes its data in pieces of 32 KiB; a peer that
/// sends more per frame is refused rather than buffered without bound.
pub(super) const MAX_PAYLOAD: usize = 256 * 1024;

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
pub(super) mod status {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Frame {
    SynStream {
        stream: u32,
        fin: bool,
        block: Bytes,
    },
    SynReply {
        stream: u32,
        block: Bytes,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame of a type this server has no use for.
    Ignored {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub(super) enum FrameError {
    #[error("SPDY version {0} is not 3")]
    Version(u16),
    #[error("a frame of {0} bytes is larger than the {MAX_PAYLOAD} this node reads")]
    TooLarge(usize),
    #[error("a control frame of type {0} is shorter than its fields")]
    Short(u16),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads and writes frames on the upgraded connection.
#[derive(Debug, Default)]
pub(super) struct SpdyCodec;

impl Decoder for SpdyCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(head) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let mut payload = src.split_to(len).freeze();
        let fin = flags & FLAG_FIN != 0;
        if first & CONTROL_BIT == 0 {
            let stream = first & STREAM_ID_MASK;
            return Ok(Some(Frame::Data {
                stream,
                fin,
                data: payload,
            }));
        }
        let version = (first >> 16) & 0x7fff;
        if version != VERSION {
            // Masked to 15 bits, so it fits.
            return Err(FrameError::Version(version as u16));
        }
        let kind = (first & 0xffff) as u16;
        let need = match kind {
            SYN_STREAM => 10,
            SYN_REPLY | PING => 4,
            RST_STREAM | GOAWAY => 8,
            _ => 0,
        };
        if payload.len() < need {
            return Err(FrameError::Short(kind));
        }
        let frame = match kind {
            SYN_STREAM => {
                let stream = payload.get_u32() & STREAM_ID_MASK;
                // The associated stream, priority and slot mean nothing to a port forward.
                payload.advance(6);
                Frame::SynStream {
                    stream,
                    fin,
                    block: payload,
                }
            }
            SYN_REPLY => Frame::SynReply {
                stream: payload.get_u32() & STREAM_ID_MASK,
                block: payload,
            },
            RST_STREAM => Frame::RstStream {
                stream: payload.get_u32() & STREAM_ID_MASK,
                status: payload.get_u32(),
            },
            PING => Frame::Ping {
                id: payload.get_u32(),
            },
            GOAWAY => Frame::GoAway {
                last_good: payload.get_u32() & STREAM_ID_MASK,
                status: payload.get_u32(),
            },
            kind => Frame::Ignored { kind },
        };
        Ok(Some(frame))
    }
}

impl Encoder<Frame> for SpdyCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::Data { stream, fin, data } => {
                let len = length(data.len())?;
                dst.reserve(HEADER_LEN + data.len());
                dst.put_u32(stream & STREAM_ID_MASK);
                dst.put_u32(fin_flag(fin) | len);
                dst.put_slice(&data);
            }
            Frame::SynStream { stream, fin, block } => {
                control(dst, SYN_STREAM, fin_flag(fin), 10 + block.len())?;
                dst.put_u32(stream & STREAM_ID_MASK);
                dst.put_u32(0); // associated stream
                dst.put_u16(0); // priority and slot
                dst.put_slice(&block);
            }
            Frame::SynReply { stream, block } => {
                control(dst, SYN_REPLY, 0, 4 + block.len())?;
                dst.put_u32(stream & STREAM_ID_MASK);
                dst.put_slice(&block);
            }
            Frame::RstStream { stream, status } => {
                control(dst, RST_STREAM, 0, 8)?;
                dst.put_u32(stream & STREAM_ID_MASK);
                dst.put_u32(status);
            }
            Frame::Ping { id } => {
                control(dst, PING, 0, 4)?;
                dst.put_u32(id);
            }
            Frame::GoAway { last_good, status } => {
                control(dst, GOAWAY, 0, 8)?;
                dst.put_u32(last_good & STREAM_ID_MASK);
                dst.put_u32(status);
            }
            Frame::Ignored { kind } => control(dst, kind, 0, 0)?,
        }
        Ok(())
    }
}

fn fin_flag(fin: bool) -> u32 {
    if fin { u32::from(FLAG_FIN) << 24 } else { 0 }
}

fn length(len: usize) -> Result<u32, FrameError> {
    u32::try_from(len)
        .ok()
        .filter(|&n| n <= LENGTH_MASK)
        .ok_or(FrameError::TooLarge(len))
}

fn control(dst: &mut BytesMut, kind: u16, flags: u32, len: usize) -> Result<(), FrameError> {
    let len = length(len)?;
    dst.reserve(HEADER_LEN + len as usize);
    dst.put_u32(CONTROL_BIT | VERSION << 16 | u32::from(kind));
    dst.put_u32(flags | len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) -> Frame {
        let mut buf = BytesMut::new();
        SpdyCodec.encode(frame, &mut buf).unwrap();
        let decoded = SpdyCodec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "bytes left over");
        decoded
    }

    #[test]
    fn frames_survive_a_round_trip() {
        for frame in [
            Frame::SynStream {
                stream: 1,
                fin: false,
                block: Bytes::from_static(b"abc"),
            },
            Frame::SynReply {
                stream: 3,
                block: Bytes::from_static(b"xyz"),
            },
            Frame::RstStream {
                stream: 5,
                status: status::CANCEL,
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good: 9,
                status: 0,
            },
            Frame::Data {
                stream: 11,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Ignored { kind: 9 },
        ] {
            assert_eq!(round_trip(frame.clone()), frame);
        }
    }

    #[test]
    fn a_syn_stream_is_laid_out_as_spdystream_writes_it() {
        // Control bit, version 3, type 1; FIN flag; length 10 + 2; stream 1; associated 0;
        // priority 0 and slot 0; then the header block.
        let bytes = [
            0x80, 0x03, 0x00, 0x01, 0x01, 0x00, 0x00, 0x0c, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xaa,
            0xbb,
        ];
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            SpdyCodec.decode(&mut buf).unwrap(),
            Some(Frame::SynStream {
                stream: 1,
                fin: true,
                block: Bytes::from_static(&[0xaa, 0xbb]),
            })
        );
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let mut whole = BytesMut::new();
        SpdyCodec
            .encode(
                Frame::Data {
                    stream: 1,
                    fin: false,
                    data: Bytes::from_static(b"0123456789"),
                },
                &mut whole,
            )
            .unwrap();
        let mut buf = BytesMut::from(&whole[..12]);
        assert_eq!(SpdyCodec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&whole[12..]);
        assert!(matches!(
            SpdyCodec.decode(&mut buf).unwrap(),
            Some(Frame::Data { stream: 1, .. })
        ));
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        // Another SPDY version.
        let mut buf = BytesMut::from(&[0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0][..]);
        assert!(matches!(
            SpdyCodec.decode(&mut buf),
            Err(FrameError::Version(2))
        ));
        // A RST_STREAM too short for its fields.
        let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x03, 0, 0, 0, 2, 0, 1][..]);
        assert!(matches!(
            SpdyCodec.decode(&mut buf),
            Err(FrameError::Short(RST_STREAM))
        ));
        // A frame larger than the bound is refused from its header alone.
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            SpdyCodec.decode(&mut buf),
            Err(FrameError::TooLarge(0xff_ffff))
        ));
    }
}
