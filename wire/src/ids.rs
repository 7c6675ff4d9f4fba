//! 128-bit identifiers. On the wire they are the FlatBuffers struct `Id128 { hi, lo }`;
//! in JSON they are UUID strings.

use std::fmt;

macro_rules! id128 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub u128);

        impl $name {
            pub const fn from_u128(v: u128) -> Self {
                Self(v)
            }
            pub const fn as_u128(self) -> u128 {
                self.0
            }
            pub fn to_be_bytes(self) -> [u8; 16] {
                self.0.to_be_bytes()
            }
            pub fn from_be_bytes(b: [u8; 16]) -> Self {
                Self(u128::from_be_bytes(b))
            }
            /// A fresh random (UUIDv4) id.
            pub fn random() -> Self {
                Self(uuid::Uuid::new_v4().as_u128())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), uuid::Uuid::from_u128(self.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", uuid::Uuid::from_u128(self.0))
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self(uuid::Uuid::parse_str(s)?.as_u128()))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id128!(
    /// A user account.
    UserId
);
id128!(
    /// One device (installation) of a user; chosen by the client, stable across reconnects.
    DeviceId
);
id128!(
    /// A 1:1 or group conversation.
    ConversationId
);
id128!(
    /// A stored message or file; time-ordered (UUIDv7 layout) so ids sort by creation time.
    MessageId
);

impl MessageId {
    /// A UUIDv7 id for the given Unix time in milliseconds (random low bits).
    pub fn new_v7(unix_ms: u64) -> Self {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            unix_ms / 1000,
            ((unix_ms % 1000) * 1_000_000) as u32,
        );
        Self(uuid::Uuid::new_v7(ts).as_u128())
    }
}
