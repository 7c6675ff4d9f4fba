use tracing::debug;
use wtransport_proto::bytes::IoReadError;
use wtransport_proto::capsule::capsules;
use wtransport_proto::capsule::Capsule;
use wtransport_proto::capsule::{self};
use wtransport_proto::error::ErrorCode;
use wtransport_proto::frame::FrameKind;
use wtransport_proto::varint::VarInt;

use super::session::StreamSession;
use super::ProtoReadError;
use crate::driver::DriverError;
use crate::error::ApplicationClose;
use std::future::pending;

pub struct ConnectStream {
    stream: Option<StreamSession>,
    /// Tern patch: a CLOSE_WEBTRANSPORT_SESSION capsule was sent (at most one is).
    close_sent: bool,
}

/// Tern patch: the largest application error message of a CLOSE_WEBTRANSPORT_SESSION capsule
/// (the draft's limit, also what the parser above accepts).
pub const MAX_CLOSE_REASON_BYTES: usize = 1024;

/// QUIC variable-length integer encoding (RFC 9000, 16), for values below 2^30.
fn put_varint(out: &mut Vec<u8>, value: u32) {
    if value < 1 << 6 {
        out.push(value as u8);
    } else if value < 1 << 14 {
        out.extend_from_slice(&(0x4000 | value as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&(0x8000_0000 | value).to_be_bytes());
    }
}

impl ConnectStream {
    pub fn empty() -> Self {
        Self {
            stream: None,
            close_sent: false,
        }
    }

    /// Tern patch: ends the session the way the WebTransport over HTTP/3 draft says (4.6): a
    /// CLOSE_WEBTRANSPORT_SESSION capsule with the application's code and reason on the
    /// CONNECT stream, then FIN. The peer sees the code and reason (a browser's
    /// `WebTransport.closed` resolves with them) and closes the connection itself; no
    /// application code travels in the HTTP/3 error space. Reading the stream goes on, so the
    /// peer's FIN or own capsule ends the driver as usual.
    pub async fn close_session(&mut self, error_code: u32, reason: &[u8]) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        if self.close_sent {
            return;
        }
        self.close_sent = true;
        let mut end = reason.len().min(MAX_CLOSE_REASON_BYTES);
        // Cut at a UTF-8 boundary: the reason must stay valid UTF-8.
        while end > 0 && std::str::from_utf8(&reason[..end]).is_err() {
            end -= 1;
        }
        let reason = &reason[..end];
        let mut payload = Vec::with_capacity(8 + 4 + reason.len());
        // CLOSE_WEBTRANSPORT_SESSION (wtransport-proto keeps its constant private).
        put_varint(&mut payload, 0x2843);
        put_varint(&mut payload, (4 + reason.len()) as u32);
        payload.extend_from_slice(&error_code.to_be_bytes());
        payload.extend_from_slice(reason);
        if stream
            .write_frame(wtransport_proto::frame::Frame::new_data(payload.into()))
            .await
            .is_ok()
        {
            stream.finish_now();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stream.is_none()
    }

    pub fn set_stream(&mut self, stream: StreamSession) {
        self.stream = Some(stream);
    }

    pub async fn run(&mut self) -> DriverError {
        let stream = match self.stream.as_mut() {
            Some(stream) => stream,
            None => pending().await,
        };

        loop {
            return match stream.read_frame().await {
                Ok(frame) => {
                    if !matches!(frame.kind(), FrameKind::Data) {
                        debug!("Skipping non-data frame of kind {:?}", frame.kind());
                        continue;
                    }

                    let capsule = match Capsule::with_frame(&frame) {
                        Some(capsule)
                            if matches!(
                                capsule.kind(),
                                capsule::CapsuleKind::CloseWebTransportSession
                            ) =>
                        {
                            capsule
                        }
                        // Unknown capsule, skip it
                        _ => {
                            debug!(
                                "Unknown capsule of kind {:?} of {}B",
                                frame.kind(),
                                frame.payload().len()
                            );

                            continue;
                        }
                    };

                    let close_session =
                        match capsules::CloseWebTransportSession::with_capsule(&capsule) {
                            Ok(close_session) => close_session,
                            Err(error_code) => return DriverError::Proto(error_code),
                        };

                    // reset right away to avoid receiving additional data which requires resetting with ErrorCode::Message.
                    self.stream
                        .take()
                        .unwrap()
                        .reset(ErrorCode::NoError.to_code());

                    DriverError::ApplicationClosed(ApplicationClose::new(
                        close_session.error_code(),
                        close_session
                            .reason()
                            .as_bytes()
                            .to_vec()
                            .into_boxed_slice(),
                    ))
                }
                Err(ProtoReadError::H3(error_code)) => DriverError::Proto(error_code),
                Err(ProtoReadError::IO(io_error)) => match io_error {
                    // Cleanly terminating a CONNECT stream without a CLOSE_WEBTRANSPORT_SESSION
                    // capsule SHALL be semantically equivalent to terminating it with a
                    // CLOSE_WEBTRANSPORT_SESSION capsule that has an error code of 0 and an empty error string.
                    IoReadError::ImmediateFin => DriverError::ApplicationClosed(
                        ApplicationClose::new(VarInt::from_u32(0), Box::new([])),
                    ),
                    IoReadError::UnexpectedFin | IoReadError::Reset => {
                        DriverError::Proto(ErrorCode::ClosedCriticalStream)
                    }
                    IoReadError::NotConnected => DriverError::NotConnected,
                },
            };
        }
    }
}
