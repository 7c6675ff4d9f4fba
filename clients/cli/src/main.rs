//! `tern-cli`: a command-line client for a Tern server.

mod chat;
mod files;
mod keys;
mod render;
mod state;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use tern_sdk::tern_wire::api::ConversationView;
use tern_sdk::tern_wire::ids::ConversationId;
use tern_sdk::{Config, E2e, HistoryQuery, HttpApi, TransportPref, Trust};
use time::UtcOffset;

use crate::render::{Directory, conversation_label};
use crate::state::{Session, State};

const TRUST_HELP: &str = "\
TRUST: the server's certificate is usually self-signed. At startup the server prints the
SHA-256 of its certificate and writes the certificate (PEM) into its data directory. Pass the
hash with --cert-hash HEX, or the PEM file with --ca-file when its names match the address you use.
tern-cli never fetches the hash from the server itself: a hash obtained over an unverified
connection would prove nothing. After `login`, the server address and trust are remembered.

EXAMPLE (two people, two terminals):
  export TERN_CERT_HASH=<hash printed by the server>
  TERN_CLI_HOME=/tmp/alice tern-cli --server 127.0.0.1:4433 register alice
  TERN_CLI_HOME=/tmp/alice tern-cli --server 127.0.0.1:4433 login alice
  TERN_CLI_HOME=/tmp/bob   tern-cli --server 127.0.0.1:4433 register bob
  TERN_CLI_HOME=/tmp/bob   tern-cli --server 127.0.0.1:4433 login bob
  TERN_CLI_HOME=/tmp/alice tern-cli dm bob        # prints the conversation id
  TERN_CLI_HOME=/tmp/alice tern-cli chat @bob     # terminal 1
  TERN_CLI_HOME=/tmp/bob   tern-cli chat @alice   # terminal 2";

#[derive(Debug, Parser)]
#[command(name = "tern-cli", version, about = "Command-line client for a Tern messaging server", after_long_help = TRUST_HELP)]
struct Cli {
    /// Server address, HOST:PORT (remembered after login).
    #[arg(long, env = "TERN_SERVER", global = true)]
    server: Option<String>,
    /// SHA-256 of the server's certificate, hex as printed by the server (colons allowed;
    /// comma-separated for several).
    #[arg(
        long = "cert-hash",
        env = "TERN_CERT_HASH",
        global = true,
        value_delimiter = ','
    )]
    cert_hash: Vec<String>,
    /// PEM file with the CA (or the server's own certificate) to verify the server against.
    #[arg(
        long = "ca-file",
        env = "TERN_CA_FILE",
        global = true,
        conflicts_with = "cert_hash"
    )]
    ca_file: Option<PathBuf>,
    /// Real-time transport: auto (WebTransport, else WebSocket), wt or ws.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_transport)]
    transport: TransportPref,
    /// Directory for the state file (token, device id, cursors). Default ~/.tern-cli.
    #[arg(long, env = "TERN_CLI_HOME", global = true)]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account.
    Register {
        username: String,
        /// Prefer TERN_PASSWORD or the prompt: arguments are visible to other local users.
        #[arg(long, env = "TERN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Log in and remember the session (server, trust, token).
    Login {
        username: String,
        #[arg(long, env = "TERN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Revoke the token on the server and forget it.
    Logout,
    /// Show who is logged in.
    Me,
    /// Open (or create) the 1:1 conversation with USER; prints its id.
    Dm { username: String },
    /// Create a group (the members are invited; they join by accepting); prints its id.
    Group {
        name: String,
        /// Other members' usernames, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List your conversations.
    List,
    /// Show recent messages of a conversation (id, @user or #group).
    History {
        conversation: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only messages with seq below this.
        #[arg(long)]
        before: Option<u64>,
    },
    /// List pending group invitations and 1:1 message requests.
    Invitations,
    /// Accept an invitation or message request (conversation id, @inviter or #group).
    Accept { invitation: String },
    /// Decline an invitation or message request (conversation id, @inviter or #group).
    Decline { invitation: String },
    /// Block USER: no 1:1 messages, invitations or presence between you.
    Block { username: String },
    /// Lift a block.
    Unblock { username: String },
    /// List the users you block.
    Blocked,
    /// List this account's devices (the one you are on is marked), or revoke one.
    Devices {
        /// Revoke this device id: its keys, inbox and session are deleted on the server and it
        /// gets no new message keys.
        #[arg(long)]
        revoke: Option<String>,
    },
    /// Show the safety number you share with USER (compare it with them in person or on a
    /// call); `--confirm` marks their devices verified once it matches.
    Verify {
        /// @user or user
        username: String,
        #[arg(long)]
        confirm: bool,
    },
    /// Encrypted key backup: `create` uploads this device's message keys sealed with a key
    /// derived from a recovery passphrase; `restore` (on a new device) reads them back, so
    /// history decrypts.
    Backup {
        #[command(subcommand)]
        action: BackupAction,
    },
    /// Chat interactively: every line you type is sent; incoming messages are printed.
    /// `/file PATH` shares a file; `/quit` or Ctrl-D leaves. Resumes where this device left off.
    Chat { conversation: String },
    /// Download a shared file: the file message's conversation and seq (chat and history
    /// print the command). The file is decrypted and verified while it downloads and written
    /// only when complete and its SHA-256 matches.
    Download {
        conversation: String,
        seq: u64,
        /// Where to write it (default: the file's name in the current directory). Never
        /// overwritten.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum BackupAction {
    /// Create a new backup (replaces the old one) and upload every key this device holds.
    Create {
        /// Prefer TERN_BACKUP_PASSPHRASE or the prompt.
        #[arg(long, env = "TERN_BACKUP_PASSPHRASE", hide_env_values = true)]
        passphrase: Option<String>,
    },
    /// Restore the backup's keys onto this device.
    Restore {
        #[arg(long, env = "TERN_BACKUP_PASSPHRASE", hide_env_values = true)]
        passphrase: Option<String>,
    },
}

fn parse_transport(s: &str) -> Result<TransportPref, String> {
    s.parse().map_err(|e: tern_sdk::Error| e.to_string())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Must be read before any thread exists (the `time` crate refuses afterwards).
    let offset = UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(run(cli, offset));
    // `chat` reads stdin on a blocking thread that cannot be interrupted; waiting for it on
    // shutdown would hang until the next key press.
    rt.shutdown_background();
    if let Err(e) = result {
        // `{:#}` prints the cause chain on one line; no backtrace noise for users.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn run(cli: Cli, offset: UtcOffset) -> Result<()> {
    let dir = State::dir(cli.home.as_deref())?;
    let mut st = State::load(&dir)?;
    match &cli.command {
        Command::Register { username, password } => {
            let config = config(&cli, None)?;
            let password = password_for(password.as_deref(), true)?;
            let user = HttpApi::new(&config)?
                .register(username, &password)
                .await
                .map_err(|e| hint(e, &config))?;
            println!(
                "registered {} ({})",
                render::sanitize(&user.username),
                user.user_id
            );
            println!(
                "next: tern-cli --server {} login {}",
                config.authority(),
                user.username
            );
        }
        Command::Login { username, password } => {
            let config = config(&cli, None)?;
            let password = password_for(password.as_deref(), false)?;
            let mut api = HttpApi::new(&config)?;
            let resp = api
                .login(username, &password)
                .await
                .map_err(|e| hint(e, &config))?;
            if st.cursor_owner != Some(resp.user_id) {
                st.cursors.clear();
                st.cursor_owner = Some(resp.user_id);
                // The server binds a device id to the user who first used it: another user
                // logging in here gets a device of their own.
                st.device_id = None;
            }
            // The device is bound to the session that last used it while that token is valid:
            // end the previous session here (best effort) so the new token can take it over.
            if let Some(old) = st.session.take()
                && old.server == config.authority()
                && let Ok(api) = HttpApi::new(&config)
            {
                let mut api = api.with_token(&old.token);
                if let Err(e) = api.logout().await
                    && !e.is_auth()
                {
                    eprintln!("note: could not end the previous session on the server: {e}");
                }
            }
            st.device();
            st.session = Some(Session {
                server: config.authority().to_string(),
                cert_hashes: cli.cert_hash.clone(),
                ca_file: cli
                    .ca_file
                    .as_ref()
                    .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
                username: resp.username.clone(),
                user_id: resp.user_id,
                token: resp.token,
                expires_at_ms: resp.expires_at_ms,
            });
            st.save(&dir)?;
            println!(
                "logged in as {} (session until {})",
                render::sanitize(&resp.username),
                render::date_time(resp.expires_at_ms, offset)
            );
        }
        Command::Logout => {
            let session = st.session.clone().context("not logged in")?;
            let config = config(&cli, Some(&session))?;
            let mut api = HttpApi::new(&config)?.with_token(&session.token);
            let outcome = api.logout().await;
            // Forget the token either way: if the server could not be told, the local copy is
            // still better gone.
            st.session = None;
            st.save(&dir)?;
            match outcome {
                Ok(()) => println!("logged out"),
                Err(e) if e.is_auth() => println!("logged out (the token was no longer valid)"),
                Err(e) => eprintln!(
                    "forgot the local session, but the server did not confirm revocation: {e}"
                ),
            }
        }
        Command::Me => {
            let (api, _) = authed(&cli, &st)?;
            let me = api.me().await?;
            println!("{} ({})", render::sanitize(&me.username), me.user_id);
        }
        Command::Dm { username } => {
            let (api, _) = authed(&cli, &st)?;
            let conv = api.create_direct(username).await?;
            println!("{}", conv.conversation_id);
        }
        Command::Group {
            name,
            members,
            description,
        } => {
            let (api, _) = authed(&cli, &st)?;
            let conv = api.create_group(name, description, members).await?;
            println!("{}", conv.conversation_id);
        }
        Command::Invitations => {
            let (api, _) = authed(&cli, &st)?;
            let invitations = api.invitations().await?;
            if invitations.is_empty() {
                println!("no pending invitations");
            }
            for i in &invitations {
                let what = if i.name.is_empty() {
                    "message request".to_owned()
                } else {
                    format!("group #{}", render::sanitize(&i.name))
                };
                println!(
                    "{}  {what} from @{}",
                    i.conversation_id,
                    render::sanitize(&i.inviter)
                );
            }
        }
        Command::Accept { invitation } | Command::Decline { invitation } => {
            let (api, _) = authed(&cli, &st)?;
            let invitations = api.invitations().await?;
            let id = resolve_invitation(invitation, &invitations)?;
            if matches!(cli.command, Command::Accept { .. }) {
                api.accept_invitation(id).await?;
                println!("accepted {id}");
            } else {
                api.decline_invitation(id).await?;
                println!("declined {id}");
            }
        }
        Command::Block { username } => {
            let (api, _) = authed(&cli, &st)?;
            api.block(username).await?;
            println!("blocked {}", render::sanitize(username));
        }
        Command::Unblock { username } => {
            let (api, _) = authed(&cli, &st)?;
            api.unblock(username).await?;
            println!("unblocked {}", render::sanitize(username));
        }
        Command::Blocked => {
            let (api, _) = authed(&cli, &st)?;
            let blocked = api.blocks().await?;
            if blocked.is_empty() {
                println!("you block nobody");
            }
            for u in &blocked {
                println!("{} ({})", render::sanitize(&u.username), u.user_id);
            }
        }
        Command::List => {
            let (api, session) = authed(&cli, &st)?;
            let convs = api.conversations().await?;
            if convs.is_empty() {
                println!(
                    "no conversations yet (tern-cli dm USER, or tern-cli group NAME --members a,b)"
                );
            }
            for c in &convs {
                let seen = st.cursors.get(&c.conversation_id).copied().unwrap_or(0);
                let unread = c.last_seq.saturating_sub(seen);
                println!(
                    "{}  {:<24} {:>3} members  {:>6} messages  {}",
                    c.conversation_id,
                    conversation_label(session.user_id, c),
                    c.members.len(),
                    c.last_seq,
                    if unread > 0 {
                        format!("{unread} unread")
                    } else {
                        String::new()
                    }
                );
            }
        }
        Command::History {
            conversation,
            limit,
            before,
        } => {
            let (api, session) = authed(&cli, &st)?;
            let convs = api.conversations().await?;
            let conv = resolve(conversation, session.user_id, &convs)?;
            let mut dir_names = Directory::default();
            for c in &convs {
                dir_names.learn(session.user_id, c);
            }
            let page = api
                .history(
                    conv.conversation_id,
                    HistoryQuery {
                        before: *before,
                        limit: Some(*limit),
                        ..HistoryQuery::default()
                    },
                )
                .await?;
            if page.has_more {
                let oldest = page.messages.first().map_or(0, |m| m.seq);
                println!("(older messages: --before {oldest})");
            }
            let messages = page
                .messages
                .iter()
                .map(|v| tern_sdk::message_from_view(conv.conversation_id, v))
                .collect::<tern_sdk::Result<Vec<_>>>()?;
            // Decrypted here, on this device: the server only ever had ciphertext.
            let device = st.device();
            st.save(&dir)?;
            let mut e2e = keys::open(&dir, &session, device)?;
            let config = config(&cli, Some(&session))?;
            let conn = keys::sync(&config, &session, device, &st.cursor_list(), &mut e2e).await?;
            let shown = keys::decrypt_all(&mut e2e, &conn, messages).await?;
            conn.close().await;
            for r in shown {
                let (m, text) = match r {
                    Ok(m) => {
                        let text = render::body(&m);
                        (m, text)
                    }
                    Err(u) => {
                        let text = keys::why(&u);
                        (*u.message, text)
                    }
                };
                println!(
                    "[{}] #{} {}: {}{}",
                    render::date_time(m.timestamp_ms, offset),
                    m.seq,
                    dir_names.user(m.sender_user),
                    text,
                    chat::download_hint(&m)
                );
            }
        }
        Command::Devices { revoke } => {
            let (api, _) = authed(&cli, &st)?;
            let me = st.device();
            if let Some(id) = revoke {
                let id: tern_sdk::tern_wire::ids::DeviceId = id
                    .parse()
                    .map_err(|_| anyhow!("{id:?} is not a device id"))?;
                if id == me {
                    bail!("that is this device: use `tern-cli logout` here instead");
                }
                api.revoke_device(id).await?;
                println!("revoked {id}");
            } else {
                for d in api.devices().await? {
                    println!(
                        "{}  {}  keys: {}  last seen {}{}",
                        d.device_id,
                        if d.created_ms > 0 {
                            render::date_time(d.created_ms, offset)
                        } else {
                            "?".into()
                        },
                        if d.has_keys {
                            keys::short_fingerprint(&d.identity_key)
                        } else {
                            "none".into()
                        },
                        if d.last_seen_ms > 0 {
                            render::date_time(d.last_seen_ms, offset)
                        } else {
                            "?".into()
                        },
                        if d.device_id == me {
                            "  (this device)"
                        } else {
                            ""
                        },
                    );
                }
            }
        }
        Command::Verify { username, confirm } => {
            let (api, session) = authed(&cli, &st)?;
            let name = username.trim_start_matches('@');
            let other = api.user_by_name(name).await?;
            let device = st.device();
            st.save(&dir)?;
            let mut e2e = keys::open(&dir, &session, device)?;
            let config = config(&cli, Some(&session))?;
            let conn = keys::sync(&config, &session, device, &st.cursor_list(), &mut e2e).await?;
            e2e.machine_mut().mark_device_list_stale(other.user_id);
            e2e.machine_mut().mark_device_list_stale(session.user_id);
            e2e.query(&conn, &[other.user_id, session.user_id]).await?;
            conn.close().await;
            for n in e2e.take_notices() {
                eprintln!("-- {}", keys::notice(&n));
            }
            let number = e2e
                .machine()
                .safety_number(other.user_id)
                .context("they have no device with keys yet")?;
            println!("safety number with {}:", render::sanitize(&other.username));
            println!("  {number}");
            for d in e2e.machine().devices_of(other.user_id) {
                let trust = e2e.machine().device_trust(other.user_id, d);
                println!("  device {d}: {}", keys::trust_label(trust));
            }
            if *confirm {
                e2e.machine_mut().mark_user_verified(other.user_id);
                e2e.persist()?;
                println!(
                    "marked {}'s devices verified",
                    render::sanitize(&other.username)
                );
            } else {
                println!(
                    "compare it with them; if it matches: tern-cli verify {username} --confirm"
                );
            }
        }
        Command::Backup { action } => {
            let (api, session) = authed(&cli, &st)?;
            let device = st.device();
            st.save(&dir)?;
            let mut e2e = keys::open(&dir, &session, device)?;
            match action {
                BackupAction::Create { passphrase } => {
                    let config = config(&cli, Some(&session))?;
                    let conn =
                        keys::sync(&config, &session, device, &st.cursor_list(), &mut e2e).await?;
                    conn.close().await;
                    let passphrase = password_for(passphrase.as_deref(), true)?;
                    let n = e2e.create_backup(&api, &passphrase).await?;
                    println!(
                        "backup created: {n} message keys uploaded (sealed with your passphrase)"
                    );
                }
                BackupAction::Restore { passphrase } => {
                    let passphrase = password_for(passphrase.as_deref(), false)?;
                    match e2e.restore_backup(&api, &passphrase).await {
                        Ok(report) => println!(
                            "restored {} message keys ({} already here, {} unreadable)",
                            report.imported, report.already_known, report.invalid
                        ),
                        Err(e) if E2e::is_wrong_passphrase(&e) => {
                            bail!("wrong backup passphrase: nothing was restored")
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Command::Download {
            conversation,
            seq,
            out,
        } => {
            let (api, session) = authed(&cli, &st)?;
            let convs = api.conversations().await?;
            let conv = resolve(conversation, session.user_id, &convs)?;
            let page = api
                .history(
                    conv.conversation_id,
                    HistoryQuery {
                        before: Some(seq.saturating_add(1)),
                        limit: Some(1),
                        ..HistoryQuery::default()
                    },
                )
                .await?;
            let view = page
                .messages
                .iter()
                .find(|v| v.seq == *seq)
                .ok_or_else(|| anyhow!("no message #{seq} in this conversation"))?;
            let message = tern_sdk::message_from_view(conv.conversation_id, view)?;
            // Decrypted here: only this device can read the file's key.
            let device = st.device();
            st.save(&dir)?;
            let mut e2e = keys::open(&dir, &session, device)?;
            let config = config(&cli, Some(&session))?;
            let conn = keys::sync(&config, &session, device, &st.cursor_list(), &mut e2e).await?;
            let shown = keys::decrypt_all(&mut e2e, &conn, vec![message]).await?;
            conn.close().await;
            let message = match shown.into_iter().next() {
                Some(Ok(m)) => m,
                Some(Err(u)) => bail!("message #{seq}: {}", keys::why(&u)),
                None => bail!("message #{seq} could not be read"),
            };
            let body = tern_sdk::file_body_of(&message)
                .ok_or_else(|| anyhow!("message #{seq} is not a file"))?;
            let dest = out
                .clone()
                .unwrap_or_else(|| files::default_destination(&body.name));
            let mut progress =
                files::progress_printer(format!("downloading {}", render::sanitize(&body.name)));
            let stall = config.request_timeout;
            let size = tern_sdk::download(&api, &body, &dest, stall, &mut progress)
                .await
                .with_context(|| format!("downloading message #{seq}"))?;
            println!(
                "saved {} ({} bytes, SHA-256 verified)",
                dest.display(),
                size
            );
        }
        Command::Chat { conversation } => {
            let (api, session) = authed(&cli, &st)?;
            let convs = api.conversations().await?;
            let conv = resolve(conversation, session.user_id, &convs)?.clone();
            let config = config(&cli, Some(&session))?
                .with_client_name(format!("tern-cli/{}", env!("CARGO_PKG_VERSION")));
            let device = st.device();
            st.save(&dir)?;
            chat::run(chat::ChatArgs {
                config,
                api,
                session,
                device,
                conversation: conv,
                conversations: convs,
                cursors: st.cursor_list(),
                state_dir: dir,
                offset,
            })
            .await?;
        }
    }
    Ok(())
}

/// Builds the SDK config: command-line server/trust first, then the remembered session's.
fn config(cli: &Cli, session: Option<&Session>) -> Result<Config> {
    let server = match (&cli.server, session) {
        (Some(s), _) => s.clone(),
        (None, Some(sess)) => sess.server.clone(),
        (None, None) => bail!("no server: pass --server HOST:PORT (or set TERN_SERVER)"),
    };
    // The session's trust only applies to the session's server.
    let same_server =
        session.filter(|s| s.server == server.trim_start_matches("https://").trim_end_matches('/'));
    let trust = if !cli.cert_hash.is_empty() {
        Trust::pinned_hex(&cli.cert_hash)?
    } else if let Some(ca) = &cli.ca_file {
        Trust::ca_pem_file(ca)?
    } else if let Some(s) = same_server.filter(|s| !s.cert_hashes.is_empty()) {
        Trust::pinned_hex(&s.cert_hashes)?
    } else if let Some(ca) = same_server.and_then(|s| s.ca_file.as_ref()) {
        Trust::ca_pem_file(ca)?
    } else {
        Trust::System
    };
    Ok(Config::new(&server, trust)?.with_transport(cli.transport))
}

fn authed(cli: &Cli, st: &State) -> Result<(HttpApi, Session)> {
    let session = st
        .session
        .clone()
        .context("not logged in: run `tern-cli --server HOST:PORT login USER` first")?;
    if let Some(s) = &cli.server
        && s.trim_start_matches("https://").trim_end_matches('/') != session.server
    {
        bail!(
            "logged in to {}, not {s}: log in there first",
            session.server
        );
    }
    let config = config(cli, Some(&session))?;
    Ok((HttpApi::new(&config)?.with_token(&session.token), session))
}

/// Finds a conversation by id, `@user` (direct), `#name` or a bare name (group or peer).
/// An invitation named by its conversation id, `@inviter` or `#group name`.
fn resolve_invitation(
    wanted: &str,
    invitations: &[tern_sdk::tern_wire::api::InvitationView],
) -> Result<ConversationId> {
    if let Ok(id) = wanted.parse::<ConversationId>() {
        return Ok(id);
    }
    let matches: Vec<&tern_sdk::tern_wire::api::InvitationView> = invitations
        .iter()
        .filter(
            |i| match (wanted.strip_prefix('@'), wanted.strip_prefix('#')) {
                (Some(user), _) => i.inviter.eq_ignore_ascii_case(user),
                (_, Some(name)) => i.name == name,
                _ => false,
            },
        )
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.conversation_id),
        [] => {
            anyhow::bail!("no pending invitation matches {wanted:?} (see `tern-cli invitations`)")
        }
        _ => anyhow::bail!("{wanted:?} matches several invitations; use the conversation id"),
    }
}

fn resolve<'a>(
    arg: &str,
    me: tern_sdk::tern_wire::ids::UserId,
    convs: &'a [ConversationView],
) -> Result<&'a ConversationView> {
    if let Ok(id) = arg.parse::<ConversationId>() {
        return convs
            .iter()
            .find(|c| c.conversation_id == id)
            .ok_or_else(|| anyhow!("no conversation {id} among yours (tern-cli list)"));
    }
    let want = arg.trim();
    let hits: Vec<&ConversationView> = convs
        .iter()
        .filter(|c| {
            let label = conversation_label(me, c);
            label == want || label[1..] == *want
        })
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => bail!("no conversation named {want:?} (tern-cli list; tern-cli dm USER creates one)"),
        _ => bail!("{want:?} is ambiguous; use the conversation id (tern-cli list)"),
    }
}

/// `--password`/`TERN_PASSWORD`, else a prompt (no echo on a terminal, a line otherwise).
fn password_for(given: Option<&str>, confirm: bool) -> Result<String> {
    if let Some(p) = given {
        return Ok(p.to_string());
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("Password: ")?;
        if confirm && rpassword::prompt_password("Repeat password: ")? != p {
            bail!("passwords do not match");
        }
        Ok(p)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

/// Adds the likely fix to certificate failures when nothing is pinned.
fn hint(e: tern_sdk::Error, config: &Config) -> anyhow::Error {
    let text = e.to_string();
    let tls_failure = matches!(e, tern_sdk::Error::Http(_)) && text.contains("certificate");
    if tls_failure && matches!(config.trust(), Trust::System) {
        anyhow!(
            "{text}\nhint: the server's certificate is probably self-signed; pass --cert-hash with the SHA-256 the server printed"
        )
    } else {
        anyhow!(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_global_flags_after_command() {
        let cli = Cli::try_parse_from([
            "tern-cli",
            "chat",
            "@bob",
            "--server",
            "127.0.0.1:4433",
            "--transport",
            "ws",
        ])
        .expect("parse");
        assert_eq!(cli.server.as_deref(), Some("127.0.0.1:4433"));
        assert_eq!(cli.transport, TransportPref::WebSocket);
        assert!(Cli::try_parse_from(["tern-cli", "--transport", "udp", "me"]).is_err());
    }
}
