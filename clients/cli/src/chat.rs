//! `tern-cli chat`: lines from stdin are sent, incoming messages printed, reconnects automatic.
//! `/file PATH` shares a file (encrypted on this device, uploaded with progress).

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use tern_sdk::tern_wire::api::ConversationView;
use tern_sdk::tern_wire::ids::{DeviceId, UserId};
use tern_sdk::tern_wire::msg::{Cursor, ErrorCode, Message, Notice, ServerMessage};
use tern_sdk::{Client, ClientEvent, CloseReason, Config, HttpApi, SkipReason};
use time::UtcOffset;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::render::{self, Directory};
use crate::state::{Session, State};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often cursors are written to the state file while chatting (and always on exit).
const SAVE_EVERY: Duration = Duration::from_secs(5);

pub struct ChatArgs {
    pub config: Config,
    pub api: HttpApi,
    pub session: Session,
    pub device: DeviceId,
    pub conversation: ConversationView,
    pub conversations: Vec<ConversationView>,
    pub cursors: Vec<Cursor>,
    pub state_dir: PathBuf,
    pub offset: UtcOffset,
}

struct Ui {
    me: UserId,
    current: tern_sdk::tern_wire::ids::ConversationId,
    names: Directory,
    /// Senders we already tried to look up (one conversation-list refresh per unknown user).
    looked_up: HashSet<UserId>,
    offset: UtcOffset,
    /// Both ends are terminals: the typed line can be replaced by the formatted one.
    tty: bool,
    /// What the chat shows is indexed for `tern-cli search` (None if the index cannot be
    /// opened: chatting goes on, said once).
    index: Option<tern_sdk::search::LocalIndex>,
    my_name: String,
}

impl Ui {
    /// Indexes a message that was shown.
    fn index(&mut self, m: &Message) {
        if let Some(index) = self.index.as_mut() {
            crate::search::index_shown(index, &self.names, std::slice::from_ref(m));
        }
    }

    /// Indexes a message this device sent.
    fn index_sent(&mut self, receipt: &tern_sdk::SendReceipt, content_type: &str, payload: &[u8]) {
        if let Some(index) = self.index.as_mut()
            && let Err(e) = index.add_sent(receipt, self.me, &self.my_name, content_type, payload)
        {
            eprintln!("-- could not index the sent message for search: {e}");
        }
    }

    /// The user left or was removed: nothing of the conversation stays searchable.
    fn forget(&mut self, conversation: tern_sdk::tern_wire::ids::ConversationId) {
        if let Some(index) = self.index.as_mut()
            && let Err(e) = index.forget_conversation(conversation)
        {
            eprintln!("-- could not drop the conversation from the search index: {e}");
        }
    }
}

impl Ui {
    fn print_message(&self, m: &Message) {
        let prefix = if m.conversation == self.current {
            String::new()
        } else {
            format!("{} ", self.names.conversation(m.conversation))
        };
        let who = if m.sender_user == self.me {
            "me".to_string()
        } else {
            self.names.user(m.sender_user)
        };
        println!(
            "[{}] {prefix}{who}: {}{}",
            render::clock(m.timestamp_ms, self.offset),
            render::body(m),
            download_hint(m)
        );
    }
}

/// ` — tern-cli download <conversation> <seq>` after a file message, nothing otherwise.
pub fn download_hint(m: &Message) -> String {
    if tern_sdk::file_body_of(m).is_some() {
        format!(" — tern-cli download {} {}", m.conversation, m.seq)
    } else {
        String::new()
    }
}

/// `/file PATH`: encrypts and uploads the file, then sends the message that shares it.
async fn send_file(client: &mut Client, ui: &mut Ui, path: &str) {
    let path = PathBuf::from(path.trim());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mime = crate::files::mime_for(&path);
    let mut progress =
        crate::files::progress_printer(format!("uploading {}", render::sanitize(&name)));
    match client
        .send_file(ui.current, &path, None, mime, "", &mut progress)
        .await
    {
        Ok((receipt, body)) => {
            println!(
                "[{}] me: {} — tern-cli download {} {}",
                render::clock(receipt.timestamp_ms, ui.offset),
                crate::files::summary(&body),
                receipt.conversation,
                receipt.seq
            );
            ui.index_sent(
                &receipt,
                tern_sdk::tern_core::files::FILE_CONTENT_TYPE,
                &body.to_json(),
            );
        }
        Err(e) => eprintln!("\n-- file not sent: {e}"),
    }
}

pub async fn run(args: ChatArgs) -> Result<()> {
    let ChatArgs {
        config,
        api,
        session,
        device,
        conversation,
        conversations,
        cursors,
        state_dir,
        offset,
    } = args;
    let mut ui = Ui {
        me: session.user_id,
        current: conversation.conversation_id,
        names: Directory::default(),
        looked_up: HashSet::new(),
        offset,
        tty: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
        index: match crate::search::open(&state_dir, session.user_id) {
            Ok(index) => Some(index),
            Err(e) => {
                eprintln!("-- messages of this chat will not be searchable: {e:#}");
                None
            }
        },
        my_name: session.username.clone(),
    };
    for c in &conversations {
        ui.names.learn(session.user_id, c);
    }

    // Every message this client sends is end-to-end encrypted; the server relays ciphertext.
    let mut e2e = crate::keys::open(&state_dir, &session, device)?;
    for c in &conversations {
        e2e.set_members(
            c.conversation_id,
            c.members.iter().map(|m| m.user_id).collect(),
        );
    }
    let mut client = Client::new(
        config.clone(),
        session.token.clone(),
        device,
        &cursors,
        tern_sdk::Outbox::in_memory(tern_sdk::OutboxLimits::default()),
    );
    client.set_e2e(e2e);
    let connected = client.reconnect().await;
    let mut client = match connected.map(|()| client) {
        Ok(c) => c,
        Err(e) if e.is_auth() => bail!(
            "the session is no longer valid ({e}); run `tern-cli login {}` again",
            session.username
        ),
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "-- {} over {}, as {}. Type a message and Enter; /quit or Ctrl-D to leave.",
        ui.names.conversation(ui.current),
        client
            .connection()
            .map_or("?".to_string(), |c| c.transport_kind().to_string()),
        render::sanitize(&session.username),
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut save_tick = tokio::time::interval(SAVE_EVERY);
    let mut synced_once = false;

    let result: Result<()> = loop {
        tokio::select! {
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(l)) => l,
                    Ok(None) => break Ok(()), // Ctrl-D / end of piped input
                    Err(e) => break Err(e.into()),
                };
                let text = line.trim_end_matches('\r');
                if text.trim().is_empty() {
                    continue;
                }
                if text.trim() == "/quit" {
                    break Ok(());
                }
                if let Some(path) = text.trim_start().strip_prefix("/file ") {
                    send_file(&mut client, &mut ui, path).await;
                    continue;
                }
                match client.send(ui.current, "text", text.as_bytes().to_vec()).await {
                    Ok(receipt) => {
                        if ui.tty {
                            // Replace the echoed input with the formatted line.
                            print!("\x1b[1A\x1b[2K");
                        }
                        println!("[{}] me: {}", render::clock(receipt.timestamp_ms, ui.offset), render::sanitize(text));
                        ui.index_sent(&receipt, tern_sdk::e2e::TEXT_CONTENT_TYPE, text.as_bytes());
                    }
                    Err(e) => eprintln!("-- not sent: {e}"),
                }
            }
            event = client.next_event() => {
                match event {
                    Some(ClientEvent::Message(m)) => {
                        if !ui.names.users.contains_key(&m.sender_user) && ui.looked_up.insert(m.sender_user) {
                            refresh_names(&api, &mut ui).await;
                        }
                        ui.print_message(&m);
                        ui.index(&m);
                    }
                    Some(ClientEvent::SyncComplete) => {
                        if !synced_once {
                            eprintln!("-- up to date");
                            synced_once = true;
                        }
                    }
                    Some(ClientEvent::Skipped { conversation, from_seq, to_seq, reason }) => {
                        let why = match reason {
                            SkipReason::BacklogTruncated => "too far behind; see `tern-cli history`",
                            SkipReason::Unavailable => "not available from the server",
                        };
                        eprintln!("-- {}: messages {from_seq}..={to_seq} skipped ({why})", ui.names.conversation(conversation));
                    }
                    Some(ClientEvent::Notice(Notice::GoingAway { retry_after_ms })) => {
                        eprintln!("-- server going away; reconnecting in {retry_after_ms} ms");
                    }
                    Some(ClientEvent::Notice(n)) => eprintln!("-- notice: {n:?}"),
                    Some(ClientEvent::Error { code, message, .. }) => {
                        eprintln!("-- server error {}: {}", code.as_str(), render::sanitize(&message));
                    }
                    Some(ClientEvent::Other(ServerMessage::MemberRemoved { conversation, user })) if user == ui.me => {
                        eprintln!("-- you are no longer a member of {}", ui.names.conversation(conversation));
                        ui.forget(conversation);
                    }
                    Some(ClientEvent::Other(ServerMessage::Conversation { info, .. })) => {
                        for m in &info.members {
                            ui.names.users.insert(m.user, m.username.clone());
                        }
                    }
                    Some(ClientEvent::Decrypted(m)) => {
                        eprintln!("-- a message whose key arrived late:");
                        ui.print_message(&m);
                        ui.index(&m);
                    }
                    Some(ClientEvent::Undecryptable(u)) => {
                        eprintln!(
                            "-- message #{} in {}: {}",
                            u.message.seq,
                            ui.names.conversation(u.message.conversation),
                            crate::keys::why(&u)
                        );
                    }
                    Some(ClientEvent::Crypto(n)) => eprintln!("-- {}", crate::keys::notice(&n)),
                    Some(ClientEvent::Other(_)) => {}
                    Some(ClientEvent::Disconnected(reason)) => {
                        eprintln!("-- disconnected: {reason}");
                        save(&state_dir, &session, &client);
                        if let CloseReason::Fatal { code: ErrorCode::TokenRevoked | ErrorCode::Unauthenticated, .. } = reason {
                            break Err(anyhow::anyhow!("the session ended; run `tern-cli login {}` again", session.username));
                        }
                    }
                    None => {
                        // No connection: reconnect with backoff (interruptible by Ctrl-C).
                        match reconnect(&mut client, &mut ctrl_c).await {
                            Ok(true) => eprintln!(
                                "-- reconnected over {}",
                                client.connection().map_or("?".to_string(), |c| c.transport_kind().to_string())
                            ),
                            Ok(false) => break Ok(()),
                            Err(e) => break Err(e),
                        }
                    }
                }
            }
            _ = save_tick.tick() => save(&state_dir, &session, &client),
            _ = &mut ctrl_c => break Ok(()),
        }
    };
    let cursors = client.cursors();
    client.close().await;
    if let Err(e) = State::save_cursors(&state_dir, session.user_id, &cursors) {
        eprintln!("-- could not save cursors: {e:#}");
    }
    let _ = std::io::stdout().flush();
    result
}

fn save(dir: &std::path::Path, session: &Session, client: &Client) {
    if let Err(e) = State::save_cursors(dir, session.user_id, &client.cursors()) {
        eprintln!("-- could not save cursors: {e:#}");
    }
}

async fn refresh_names(api: &HttpApi, ui: &mut Ui) {
    if let Ok(convs) = api.conversations().await {
        for c in &convs {
            ui.names.learn(ui.me, c);
        }
    }
}

/// Reconnects with exponential backoff. `Ok(false)` when the user pressed Ctrl-C meanwhile.
async fn reconnect<F>(client: &mut Client, ctrl_c: &mut std::pin::Pin<&mut F>) -> Result<bool>
where
    F: std::future::Future<Output = std::io::Result<()>>,
{
    let mut delay = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctrl_c.as_mut() => return Ok(false),
        }
        match client.reconnect().await {
            Ok(()) => return Ok(true),
            Err(e) if e.is_auth() => bail!("the session is no longer valid ({e}); log in again"),
            Err(e) => {
                eprintln!(
                    "-- reconnect failed: {e}; retrying in {}s",
                    (delay * 2).min(MAX_BACKOFF).as_secs()
                );
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
}
