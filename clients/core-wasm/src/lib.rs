//! wasm-bindgen facade over tern-core for the web client: the page runs the same protocol,
//! crypto, cursor and outbox logic as the native SDK and keeps only I/O (sockets, IndexedDB,
//! timers, UI) in TypeScript.
//!
//! Conventions of every export (the API summary for the page is in the project notes and
//! `build.sh`'s generated `.d.ts`):
//! * structured values are JSON strings in tern-wire's serde shapes: messages are internally
//!   tagged (`{"type": "send", …}`), ids are UUID strings, bytes inside messages are lowercase
//!   hex, `client_msg_id` is 32 hex digits; HTTPS API bodies keep the API's own shapes;
//! * frames, pickles and other standalone blobs are `Uint8Array`;
//! * times are JS numbers of milliseconds (`now_ms`), counts and seqs JS numbers;
//! * every failure is a thrown `Error` with a message naming what was wrong (a wrong backup
//!   passphrase has `name === "WrongPassphraseError"`); a message that cannot be decrypted is
//!   not a failure but a `{"error": "<reason>"}` result the UI shows.
//!
//! Modules: [`codec`] (frames, handshake, reply matching, stream framing), [`machine`]
//! (`Machine`, the crypto state), [`send_plan`] (`SendPlan`, `shareBatches`: preparing an
//! encrypted send), [`waiting`] (`WaitingForKeys`: messages waiting for a key or a sender
//! lookup), [`inbox`] (`InboxAcks`: which inbox shares to acknowledge, after the state is
//! stored), [`files`] (`FileEncryptor`, `FileDecryptor`: shared files encrypted in the page,
//! verified while they download), [`protocol`] (`Delivery`, `Outbox`, `Drain`, `Reconnect`, `Backoff`).

pub mod codec;
pub mod files;
pub mod inbox;
pub mod js;
pub mod machine;
pub mod protocol;
pub mod receipts;
pub mod send_plan;
pub mod waiting;

pub use codec::{FrameDecoder, check_welcome, decode_server, encode_client, hello};
pub use machine::Machine;
