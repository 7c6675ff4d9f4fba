//! The Hello and the version check of the server's Welcome.

use tern_wire::ids::DeviceId;
use tern_wire::msg::{ClientMessage, Cursor, PROTOCOL_VERSION};

/// The oldest protocol version this client speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The first frame of every connection: our version range, credentials and resume cursors
/// (conversations not listed resume after the cursor the server stored for this device).
pub fn hello(
    token: &str,
    device: DeviceId,
    client_name: &str,
    cursors: &[Cursor],
) -> ClientMessage {
    ClientMessage::Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        token: token.to_string(),
        device,
        client_name: client_name.to_string(),
        cursors: cursors.to_vec(),
    }
}

/// The server must choose a version from the range our Hello offered.
pub fn check_version(version: u16) -> Result<(), String> {
    if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(format!("server chose unsupported version {version}"))
    }
}

/// The largest frame we may send: our own limit, lowered to the server's when it announced
/// one (0 means it did not).
pub fn max_out_frame(local_max: usize, server_max: u32) -> usize {
    match server_max as usize {
        0 => local_max,
        server => local_max.min(server),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_offers_our_range_and_versions_outside_it_are_refused() {
        let cursors = [Cursor {
            conversation: tern_wire::ids::ConversationId(4),
            seq: 9,
        }];
        match hello("tok", DeviceId(3), "cli", &cursors) {
            ClientMessage::Hello {
                min_version,
                max_version,
                token,
                device,
                client_name,
                cursors: c,
            } => {
                assert_eq!((min_version, max_version), (1, PROTOCOL_VERSION));
                assert_eq!(
                    (token.as_str(), device, client_name.as_str()),
                    ("tok", DeviceId(3), "cli")
                );
                assert_eq!(c, cursors);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(check_version(PROTOCOL_VERSION), Ok(()));
        assert!(check_version(0).is_err());
        let too_new = check_version(PROTOCOL_VERSION + 1).expect_err("newer than us");
        assert!(too_new.contains("unsupported version"), "{too_new}");
        assert_eq!(max_out_frame(1000, 0), 1000);
        assert_eq!(max_out_frame(1000, 500), 500);
        assert_eq!(max_out_frame(1000, 5000), 1000);
    }
}
