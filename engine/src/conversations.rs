//! Conversation management: create 1:1 and group conversations, list them, read history,
//! and manage group membership. Every read and write checks membership.
//!
//! # Groups
//!
//! - Names are unique **per owner**, compared by [`group_uniqueness_key`]: the owner's id and
//!   the Unicode confusable skeleton (UTS #39, `unicode-security`) of [`group_name_key`] (NFKC,
//!   lowercased, NFKC again): "Café", "CAFÉ", "cafe\u{301}" and "Cаfé" (Cyrillic а) are one
//!   name for one owner. Two owners may both have a "Team": a name is a label, groups are found
//!   by id or invitation, so nobody can squat a name for others or probe which names exist.
//!   The store claims the key atomically with the creation, so of two concurrent creations one
//!   gets `Conflict`. Names and descriptions refuse control (Cc, except a newline in
//!   descriptions), format (Cf: bidi overrides and isolates, zero-width characters, BOM) and
//!   line/paragraph separator characters, and the invisible Hangul fillers.
//! - The creator is the group's owner (`MemberRole::Owner`), its only member at creation, and
//!   the only one who invites and removes members. Every user listed at creation gets an
//!   invitation (stored and sent live); unknown user ids refuse the creation (`NotFound`,
//!   nothing created). Nobody joins without accepting: `AddMember` is an invitation too.
//! - Joining is by invitation only: `AcceptInvite` without a pending invitation is `NotFound`.
//!   Declining tells the inviter (`InviteDeclined`).
//! - Blocks: an invitation between two users where either blocks the other is silently not
//!   made (the inviter sees what an unanswered invitation looks like; the block is not
//!   disclosed). Group messages are still fanned out to both: hiding a blocked member's group
//!   messages is the client's job (it knows its block list).
//!
//! # 1:1 conversations are message requests
//!
//! Opening a 1:1 creates it with both users as members (so the initiator can write and the
//! recipient receives at once) plus a pending invitation of the recipient: the request. The
//! recipient accepts it with `AcceptInvite` on the conversation (sending in it does not accept:
//! clients accept when their user replies) or declines it, which ends the recipient's
//! membership without telling the initiator; the recipient can reopen it later. Presence flows
//! only between users who both accepted a shared conversation ([`accepted_contacts`]). Either
//! user blocking the other empties the 1:1's member list in the engine ([`engine_members`]):
//! nobody can send in it (`NotFound`, like a missing conversation) and nothing is delivered;
//! opening it is refused as for an unknown user.
//! - Removal and leaving end the membership in the store first (`is_member` false, the
//!   conversation leaves `conversations_of`, so resume skips it), then tell the engine
//!   (`MembersChanged`), so fan-out stops before the request is answered. The store keeps a
//!   departure record with the highest seq stored at that moment; a former member may still
//!   read history up to it, never beyond.
//! - The owner may leave only when no other member remains (no ownership transfer yet).

use std::sync::Arc;

use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::{
    ConversationInfo, ConversationKind, DeliveryMark, ErrorCode, Member, MemberRole, ServerMessage,
};
use tokio::sync::Mutex;

use crate::core::Input;
use crate::driver::{EngineHandle, now_ms};
use crate::service::ServiceError;
use crate::store::{ConversationRecord, InvitationRecord, MemberRecord, Store, StoreError};

mod history;
pub use history::{HistoryPage, HistoryRequest};

/// Most pending invitations one user may hold; further invitations are refused.
pub const MAX_PENDING_INVITATIONS: usize = 1_000;

/// A group name compared ignoring case and normalisation: NFKC, lowercased, NFKC again
/// (lowercasing can denormalise). Not full case folding ("ß" and "ss" stay distinct).
pub fn group_name_key(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let lowered: String = name.nfkc().collect::<String>().to_lowercase();
    lowered.nfkc().collect()
}

/// The UTS #39 confusable skeleton of [`group_name_key`]: names that look alike ("paypal" with
/// a Cyrillic "а", "l" and "1" and "I") have one skeleton.
pub fn group_name_skeleton(name: &str) -> String {
    unicode_security::skeleton(&group_name_key(name)).collect()
}

/// The key under which group names are unique: per owner, by skeleton. Hashed so that the
/// index key has a fixed length whatever the skeleton expands to.
pub fn group_uniqueness_key(owner: UserId, name: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(group_name_skeleton(name).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{owner}:{hex}")
}

/// Characters no shown text may hold: control (Cc) and format (Cf: bidi embeddings,
/// overrides and isolates, zero-width space/joiners, word joiner, BOM, interlinear
/// annotations, tags), line and paragraph separators (Zl, Zp), and characters that render as
/// nothing (Hangul fillers, combining grapheme joiner). The Cf ranges follow Unicode 16.
fn is_forbidden_in_text(c: char) -> bool {
    if c.is_control() {
        return true;
    }
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1345F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Whether `a` and `b` block each other in either direction.
pub async fn blocked_either_way(
    store: &dyn Store,
    a: UserId,
    b: UserId,
) -> Result<bool, StoreError> {
    Ok(store.is_blocked(a, b).await? || store.is_blocked(b, a).await?)
}

/// The members the engine sequences and fans out to: the stored members, except that a 1:1
/// whose two users block each other (either way) has none, so nobody sends or receives in it.
pub async fn engine_members(
    store: &dyn Store,
    record: &ConversationRecord,
) -> Result<Vec<UserId>, StoreError> {
    let members: Vec<UserId> = store
        .members(record.id)
        .await?
        .into_iter()
        .map(|m| m.user)
        .collect();
    if record.kind == ConversationKind::Direct
        && let [a, b] = members.as_slice()
        && blocked_either_way(store, *a, *b).await?
    {
        return Ok(Vec::new());
    }
    Ok(members)
}

/// Most conversations read when computing a user's contacts (bounds the store work).
pub const MAX_CONTACT_CONVERSATIONS: usize = 1_000;

/// The users whose presence `user` may see and who may see `user`'s: members of a
/// conversation that both accepted (a group membership is accepted; a 1:1 is accepted by its
/// initiator, and by its recipient once the request is accepted), minus anyone blocking or
/// blocked by `user`.
pub async fn accepted_contacts(store: &dyn Store, user: UserId) -> Result<Vec<UserId>, StoreError> {
    use std::collections::HashSet;
    let pending: HashSet<ConversationId> = store
        .invitations_of(user)
        .await?
        .into_iter()
        .map(|i| i.conversation)
        .collect();
    let mut contacts = HashSet::new();
    for conversation in store
        .conversations_of(user)
        .await?
        .into_iter()
        .take(MAX_CONTACT_CONVERSATIONS)
    {
        if pending.contains(&conversation) {
            continue;
        }
        let Some(record) = store.conversation(conversation).await? else {
            continue;
        };
        let members = store.members(conversation).await?;
        for m in members {
            if m.user == user {
                continue;
            }
            // Only a 1:1 has members with a pending invitation (its request).
            if record.kind == ConversationKind::Direct
                && store.invitation(conversation, m.user).await?.is_some()
            {
                continue;
            }
            contacts.insert(m.user);
        }
    }
    for blocked in store.blocks_of(user).await? {
        contacts.remove(&blocked);
    }
    for blocker in store.blockers_of(user).await? {
        contacts.remove(&blocker);
    }
    Ok(contacts.into_iter().collect())
}

#[derive(Debug, Clone)]
pub struct ConversationLimits {
    pub max_name_chars: usize,
    pub max_description_chars: usize,
    /// Members per group, the creator included.
    pub max_group_members: usize,
    /// Largest history page; bigger requests are refused (`invalid_argument`).
    pub max_history_page: u32,
}

impl Default for ConversationLimits {
    fn default() -> Self {
        ConversationLimits {
            max_name_chars: 64,
            max_description_chars: 512,
            max_group_members: 10_000,
            max_history_page: 500,
        }
    }
}

/// A pending invitation with what a client shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInvitation {
    pub invitation: InvitationRecord,
    /// The group's name.
    pub name: String,
    /// The inviter's username.
    pub inviter: String,
}

pub struct Conversations {
    store: Arc<dyn Store>,
    engine: EngineHandle,
    limits: ConversationLimits,
    /// Serialises 1:1 creation so two simultaneous "open chat" requests get one conversation.
    direct_creation: Mutex<()>,
}

fn internal(e: StoreError) -> ServiceError {
    tracing::error!(error = %e, "storage error");
    ServiceError::new(ErrorCode::Internal, "storage error")
}

fn not_found() -> ServiceError {
    // Non-members get the same answer as for a conversation that does not exist: the id of a
    // conversation one does not belong to is not disclosed.
    ServiceError::new(ErrorCode::NotFound, "no such conversation")
}

/// Text the server shows to others (names, descriptions): no control, format or separator
/// characters (see [`is_forbidden_in_text`]); descriptions may hold newlines. Pure (public for
/// the `http_json` fuzz target).
pub fn validate_text(
    what: &str,
    value: &str,
    max_chars: usize,
    allow_empty: bool,
    allow_newline: bool,
) -> Result<String, ServiceError> {
    let value = value.trim();
    if value.is_empty() && !allow_empty {
        return Err(ServiceError::invalid(format!("{what} must not be empty")));
    }
    if value.chars().count() > max_chars {
        return Err(ServiceError::invalid(format!(
            "{what} is longer than {max_chars} characters"
        )));
    }
    if value
        .chars()
        .any(|c| is_forbidden_in_text(c) && !(allow_newline && c == '\n'))
    {
        return Err(ServiceError::invalid(format!(
            "{what} contains control, format or invisible characters"
        )));
    }
    Ok(value.to_owned())
}

impl Conversations {
    /// Refuses a member list longer than a group may be before anything looks the members up
    /// (a request naming 10^5 users must not cost 10^5 store reads).
    pub fn check_member_count(&self, listed: usize) -> Result<(), ServiceError> {
        if listed + 1 > self.limits.max_group_members {
            return Err(ServiceError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "a group has at most {} members",
                    self.limits.max_group_members
                ),
            ));
        }
        Ok(())
    }

    pub fn new(store: Arc<dyn Store>, engine: EngineHandle, limits: ConversationLimits) -> Self {
        Conversations {
            store,
            engine,
            limits,
            direct_creation: Mutex::new(()),
        }
    }

    /// Opens the 1:1 conversation between `me` and `peer`, creating it on first use as a
    /// message request to `peer` (see the module docs). Returns the conversation and whether it
    /// was created now. Refused as for an unknown user when either blocks the other.
    pub async fn open_direct(
        &self,
        me: UserId,
        peer: UserId,
    ) -> Result<(ConversationInfo, bool), ServiceError> {
        if me == peer {
            return Err(ServiceError::invalid(
                "a 1:1 conversation needs another person",
            ));
        }
        self.require_user(peer).await?;
        if blocked_either_way(&*self.store, me, peer)
            .await
            .map_err(internal)?
        {
            // The same answer as for an unknown user: the block is not disclosed.
            return Err(ServiceError::new(ErrorCode::NotFound, "no such user"));
        }
        let _guard = self.direct_creation.lock().await;
        let existing = self
            .store
            .direct_conversation(me, peer)
            .await
            .map_err(internal)?;
        let (id, created) = match existing {
            // The pair is recorded before the conversation, so a crash in between leaves a pair
            // without a conversation: finish creating it now.
            Some(id)
                if self
                    .store
                    .conversation(id)
                    .await
                    .map_err(internal)?
                    .is_some() =>
            {
                (id, false)
            }
            Some(id) => (id, true),
            None => {
                let id = ConversationId::random();
                match self.store.set_direct_conversation(me, peer, id).await {
                    Ok(()) => (id, true),
                    Err(StoreError::AlreadyExists(_)) => {
                        let id = self
                            .store
                            .direct_conversation(me, peer)
                            .await
                            .map_err(internal)?
                            .ok_or_else(not_found)?;
                        (id, false)
                    }
                    Err(e) => return Err(internal(e)),
                }
            }
        };
        if created {
            // The request is stored before the conversation: a crash in between leaves a
            // request without a conversation (not listed), never a recipient who is a member
            // without having been asked.
            let request = InvitationRecord {
                conversation: id,
                user: peer,
                inviter: me,
                created_ms: now_ms(),
            };
            self.store.put_invitation(request).await.map_err(internal)?;
            let record = ConversationRecord {
                id,
                kind: ConversationKind::Direct,
                name: String::new(),
                description: String::new(),
                created_by: me,
                created_ms: now_ms(),
            };
            let members = vec![
                MemberRecord {
                    user: me,
                    role: MemberRole::Owner,
                },
                MemberRecord {
                    user: peer,
                    role: MemberRole::Member,
                },
            ];
            self.store
                .create_conversation(record, members)
                .await
                .map_err(internal)?;
        } else if !self.store.is_member(id, me).await.map_err(internal)? {
            // `me` declined this 1:1's request earlier and now opens it: back in, accepted.
            let member = MemberRecord {
                user: me,
                role: MemberRole::Member,
            };
            match self.store.add_member(id, member).await {
                Ok(_) => {}
                Err(StoreError::NotFound(_)) => return Err(not_found()),
                Err(e) => return Err(internal(e)),
            }
            self.members_changed(id).await?;
        }
        let info = self.info(id).await?;
        if created {
            self.announce(&info).await;
            self.notify(
                vec![peer],
                ServerMessage::Invitation {
                    conversation: id,
                    inviter: me,
                    name: String::new(),
                },
            )
            .await;
        }
        Ok((info, created))
    }

    /// Creates a group owned by `me`, its only member, and invites every listed user (unknown
    /// ids refuse the creation; blocked pairs and users with a full invitation list are
    /// silently not invited).
    pub async fn create_group(
        &self,
        me: UserId,
        name: &str,
        description: &str,
        members: &[UserId],
    ) -> Result<ConversationInfo, ServiceError> {
        let name = validate_text("name", name, self.limits.max_name_chars, false, false)?;
        let display = name.clone();
        let description = validate_text(
            "description",
            description,
            self.limits.max_description_chars,
            true,
            true,
        )?;
        let mut invitees: Vec<UserId> = Vec::new();
        for user in members {
            if *user == me || invitees.contains(user) {
                continue;
            }
            invitees.push(*user);
            if invitees.len() + 1 > self.limits.max_group_members {
                return Err(ServiceError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "a group has at most {} members",
                        self.limits.max_group_members
                    ),
                ));
            }
        }
        // Every listed id must name a user before anything is written.
        let mut invitations = Vec::with_capacity(invitees.len());
        let id = ConversationId::random();
        let created_ms = now_ms();
        for user in invitees {
            self.require_user(user).await?;
            if !self.may_invite(me, id, user).await? {
                continue;
            }
            invitations.push(InvitationRecord {
                conversation: id,
                user,
                inviter: me,
                created_ms,
            });
        }
        let record = ConversationRecord {
            id,
            kind: ConversationKind::Group,
            name,
            description,
            created_by: me,
            created_ms,
        };
        let owner = vec![MemberRecord {
            user: me,
            role: MemberRole::Owner,
        }];
        let name_key = group_uniqueness_key(me, &record.name);
        let group_name = record.name.clone();
        match self.store.create_named_group(record, owner, name_key).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists(_)) => {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    format!(
                        "you already have a group named {display:?} (names are compared ignoring case, Unicode normalisation and look-alike characters)"
                    ),
                ));
            }
            Err(e) => return Err(internal(e)),
        }
        // After the group: a crash in between leaves a group without its invitations, never
        // an invitation to a group that does not exist.
        self.store
            .put_invitations(invitations.clone())
            .await
            .map_err(internal)?;
        let info = self.info(id).await?;
        self.announce(&info).await;
        for invitation in invitations {
            self.notify(
                vec![invitation.user],
                ServerMessage::Invitation {
                    conversation: id,
                    inviter: me,
                    name: group_name.clone(),
                },
            )
            .await;
        }
        Ok(info)
    }

    /// Whether `inviter` may invite `user` into `conversation` now: no block either way and
    /// room in the invitee's pending list. A `false` is not reported to the inviter.
    async fn may_invite(
        &self,
        inviter: UserId,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, ServiceError> {
        if blocked_either_way(&*self.store, inviter, user)
            .await
            .map_err(internal)?
        {
            return Ok(false);
        }
        let pending = self.store.invitations_of(user).await.map_err(internal)?;
        Ok(pending.iter().any(|i| i.conversation == conversation)
            || pending.len() < MAX_PENDING_INVITATIONS)
    }

    /// `me` blocks (`on`) or unblocks `user`. Blocking also drops `me`'s pending invitations
    /// from `user` and empties their 1:1 in the engine; unblocking restores it.
    pub async fn set_block(&self, me: UserId, user: UserId, on: bool) -> Result<(), ServiceError> {
        if me == user {
            return Err(ServiceError::invalid("you cannot block yourself"));
        }
        self.require_user(user).await?;
        self.store.set_block(me, user, on).await.map_err(internal)?;
        if on {
            for invitation in self.store.invitations_of(me).await.map_err(internal)? {
                if invitation.inviter == user {
                    self.store
                        .take_invitation(invitation.conversation, me)
                        .await
                        .map_err(internal)?;
                }
            }
        }
        if let Some(direct) = self
            .store
            .direct_conversation(me, user)
            .await
            .map_err(internal)?
        {
            self.members_changed(direct).await?;
        }
        Ok(())
    }

    /// The users `me` blocks.
    pub async fn blocked(&self, me: UserId) -> Result<Vec<UserId>, ServiceError> {
        let mut users = self.store.blocks_of(me).await.map_err(internal)?;
        users.sort();
        Ok(users)
    }

    /// Tells every online member's devices about a new conversation.
    async fn announce(&self, info: &ConversationInfo) {
        let users = info.members.iter().map(|m| m.user).collect();
        let message = Arc::new(ServerMessage::Conversation {
            request_id: 0,
            info: info.clone(),
        });
        if self
            .engine
            .input(Input::Notify { users, message })
            .await
            .is_err()
        {
            tracing::warn!("engine stopped: conversation announcement dropped");
        }
    }

    /// Delivers `message` to every online device of `users`.
    async fn notify(&self, users: Vec<UserId>, message: ServerMessage) {
        if users.is_empty() {
            return;
        }
        let message = Arc::new(message);
        if self
            .engine
            .input(Input::Notify { users, message })
            .await
            .is_err()
        {
            tracing::warn!("engine stopped: notification dropped");
        }
    }

    /// Tells the engine the stored member list changed (fan-out and send checks use it).
    async fn members_changed(&self, conversation: ConversationId) -> Result<(), ServiceError> {
        let Some(record) = self
            .store
            .conversation(conversation)
            .await
            .map_err(internal)?
        else {
            return Ok(());
        };
        let members = engine_members(&*self.store, &record)
            .await
            .map_err(internal)?;
        self.engine
            .input(Input::MembersChanged {
                conversation,
                members,
            })
            .await
            .map_err(|_| ServiceError::new(ErrorCode::ServerShutdown, "server is shutting down"))
    }

    /// The group, checked to be one that `me` owns. Non-members get `NotFound` (the id is not
    /// disclosed), members who are not the owner `Forbidden`.
    async fn owned_group(
        &self,
        me: UserId,
        conversation: ConversationId,
    ) -> Result<ConversationRecord, ServiceError> {
        let record = self.member_group(me, conversation).await?;
        if record.created_by != me {
            return Err(ServiceError::new(
                ErrorCode::Forbidden,
                "only the group's owner manages its members",
            ));
        }
        Ok(record)
    }

    /// The group, checked to have `me` as a member.
    async fn member_group(
        &self,
        me: UserId,
        conversation: ConversationId,
    ) -> Result<ConversationRecord, ServiceError> {
        self.require_member(conversation, me).await?;
        let record = self
            .store
            .conversation(conversation)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        if record.kind != ConversationKind::Group {
            return Err(ServiceError::invalid(
                "members can only be managed in groups",
            ));
        }
        Ok(record)
    }

    async fn require_user(&self, user: UserId) -> Result<(), ServiceError> {
        match self.store.user_by_id(user).await.map_err(internal)? {
            Some(_) => Ok(()),
            None => Err(ServiceError::new(ErrorCode::NotFound, "no such user")),
        }
    }

    async fn require_room(&self, conversation: ConversationId) -> Result<(), ServiceError> {
        let count = self
            .store
            .members(conversation)
            .await
            .map_err(internal)?
            .len();
        if count >= self.limits.max_group_members {
            return Err(ServiceError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "a group has at most {} members",
                    self.limits.max_group_members
                ),
            ));
        }
        Ok(())
    }

    /// The owner invites `user`: the invitation is stored and sent live (`Invitation`) to the
    /// invitee's online devices; it stays listed until accepted or declined.
    pub async fn invite(
        &self,
        me: UserId,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<PendingInvitation, ServiceError> {
        let record = self.owned_group(me, conversation).await?;
        self.require_user(user).await?;
        if self
            .store
            .is_member(conversation, user)
            .await
            .map_err(internal)?
        {
            return Err(ServiceError::new(
                ErrorCode::Conflict,
                "the user already is a member",
            ));
        }
        self.require_room(conversation).await?;
        if blocked_either_way(&*self.store, me, user)
            .await
            .map_err(internal)?
        {
            // Answered like a stored invitation that is never accepted: the block is not
            // disclosed to the inviter.
            return Ok(PendingInvitation {
                invitation: InvitationRecord {
                    conversation,
                    user,
                    inviter: me,
                    created_ms: now_ms(),
                },
                name: record.name,
                inviter: self.username(me).await?,
            });
        }
        let pending = self.store.invitations_of(user).await.map_err(internal)?;
        if !pending.iter().any(|i| i.conversation == conversation)
            && pending.len() >= MAX_PENDING_INVITATIONS
        {
            return Err(ServiceError::new(
                ErrorCode::LimitExceeded,
                "the user has too many pending invitations",
            ));
        }
        let invitation = InvitationRecord {
            conversation,
            user,
            inviter: me,
            created_ms: now_ms(),
        };
        self.store
            .put_invitation(invitation)
            .await
            .map_err(internal)?;
        self.notify(
            vec![user],
            ServerMessage::Invitation {
                conversation,
                inviter: me,
                name: record.name.clone(),
            },
        )
        .await;
        Ok(PendingInvitation {
            invitation,
            name: record.name,
            inviter: self.username(me).await?,
        })
    }

    /// Pending invitations of `me`, oldest first.
    pub async fn invitations(&self, me: UserId) -> Result<Vec<PendingInvitation>, ServiceError> {
        let mut out = Vec::new();
        for invitation in self.store.invitations_of(me).await.map_err(internal)? {
            if let Some(record) = self
                .store
                .conversation(invitation.conversation)
                .await
                .map_err(internal)?
            {
                out.push(PendingInvitation {
                    invitation,
                    name: record.name,
                    inviter: self.username(invitation.inviter).await?,
                });
            }
        }
        out.sort_by_key(|p| (p.invitation.created_ms, p.invitation.conversation));
        Ok(out)
    }

    async fn username(&self, user: UserId) -> Result<String, ServiceError> {
        Ok(self
            .store
            .user_by_id(user)
            .await
            .map_err(internal)?
            .map(|u| u.username)
            .unwrap_or_default())
    }

    /// Accepts a pending invitation: `me` becomes a member, receives new messages from now on,
    /// and every member (the joiner included) gets the updated `Conversation`.
    pub async fn accept_invite(
        &self,
        me: UserId,
        conversation: ConversationId,
    ) -> Result<ConversationInfo, ServiceError> {
        let no_invitation =
            || ServiceError::new(ErrorCode::NotFound, "no pending invitation to this group");
        let Some(invitation) = self
            .store
            .invitation(conversation, me)
            .await
            .map_err(internal)?
        else {
            return Err(no_invitation());
        };
        // The inviter blocked `me` (or `me` the inviter) after inviting: the invitation is void.
        if blocked_either_way(&*self.store, me, invitation.inviter)
            .await
            .map_err(internal)?
        {
            self.store
                .take_invitation(conversation, me)
                .await
                .map_err(internal)?;
            return Err(no_invitation());
        }
        self.require_room(conversation).await?;
        let member = MemberRecord {
            user: me,
            role: MemberRole::Member,
        };
        match self.store.accept_invitation(conversation, member).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(no_invitation()),
            Err(StoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(internal(e)),
        }
        self.members_changed(conversation).await?;
        let info = self.info(conversation).await?;
        self.announce(&info).await;
        Ok(info)
    }

    /// Declines a pending invitation; the inviter is told with `InviteDeclined`. Declining a
    /// 1:1 request ends `me`'s membership instead and tells only `me`'s devices
    /// (`MemberRemoved`): the initiator is not told.
    pub async fn decline_invite(
        &self,
        me: UserId,
        conversation: ConversationId,
    ) -> Result<(), ServiceError> {
        let Some(invitation) = self
            .store
            .take_invitation(conversation, me)
            .await
            .map_err(internal)?
        else {
            return Err(ServiceError::new(
                ErrorCode::NotFound,
                "no pending invitation to this group",
            ));
        };
        let kind = self
            .store
            .conversation(conversation)
            .await
            .map_err(internal)?
            .map(|r| r.kind);
        if kind == Some(ConversationKind::Direct) {
            if self
                .store
                .remove_member(conversation, me)
                .await
                .map_err(internal)?
                .is_some()
            {
                self.members_changed(conversation).await?;
                self.notify(
                    vec![me],
                    ServerMessage::MemberRemoved {
                        conversation,
                        user: me,
                    },
                )
                .await;
            }
            return Ok(());
        }
        self.notify(
            vec![invitation.inviter],
            ServerMessage::InviteDeclined {
                conversation,
                user: me,
            },
        )
        .await;
        Ok(())
    }

    /// `AddMember`: nobody joins a group without consenting, so this invites `user` (exactly
    /// like [`Conversations::invite`]) and answers with the group as it is.
    pub async fn add_member(
        &self,
        me: UserId,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<ConversationInfo, ServiceError> {
        self.invite(me, conversation, user).await?;
        self.info(conversation).await
    }

    /// Ends `user`'s membership and tells the engine before returning; the remaining members
    /// and the departed user get `MemberRemoved`. Returns the departure seq.
    async fn depart(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<u64, ServiceError> {
        let Some(at) = self
            .store
            .remove_member(conversation, user)
            .await
            .map_err(internal)?
        else {
            return Err(ServiceError::new(
                ErrorCode::NotFound,
                "the user is not a member",
            ));
        };
        self.members_changed(conversation).await?;
        let mut users = self.member_ids(conversation).await?;
        users.push(user);
        self.notify(users, ServerMessage::MemberRemoved { conversation, user })
            .await;
        Ok(at)
    }

    /// The owner removes a member: from now on they receive nothing of the group and can read
    /// its history only up to the returned seq.
    pub async fn remove_member(
        &self,
        me: UserId,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<u64, ServiceError> {
        self.owned_group(me, conversation).await?;
        if user == me {
            return Err(ServiceError::invalid(
                "the owner cannot remove themselves; use Leave",
            ));
        }
        self.depart(conversation, user).await
    }

    /// `me` leaves the group. The owner may leave only as the last member.
    pub async fn leave(
        &self,
        me: UserId,
        conversation: ConversationId,
    ) -> Result<u64, ServiceError> {
        let record = self.member_group(me, conversation).await?;
        if record.created_by == me {
            let others = self
                .store
                .members(conversation)
                .await
                .map_err(internal)?
                .iter()
                .any(|m| m.user != me);
            if others {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    "the owner cannot leave while other members remain; remove them first",
                ));
            }
        }
        self.depart(conversation, me).await
    }

    pub async fn require_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<(), ServiceError> {
        if self
            .store
            .is_member(conversation, user)
            .await
            .map_err(internal)?
        {
            Ok(())
        } else {
            Err(not_found())
        }
    }

    async fn member_ids(&self, conversation: ConversationId) -> Result<Vec<UserId>, ServiceError> {
        Ok(self
            .store
            .members(conversation)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|m| m.user)
            .collect())
    }

    /// The delivery marks of the current members of `conversation` (members only; former
    /// members and strangers get NotFound, as for every other read).
    pub async fn delivery_marks(
        &self,
        me: UserId,
        conversation: ConversationId,
    ) -> Result<Vec<DeliveryMark>, ServiceError> {
        self.require_member(conversation, me).await?;
        let members: std::collections::HashSet<UserId> =
            self.member_ids(conversation).await?.into_iter().collect();
        let mut marks = self
            .store
            .delivery_marks(conversation)
            .await
            .map_err(internal)?;
        marks.retain(|m| members.contains(&m.user));
        // One mark per member, and groups are capped well below the frame's limit.
        marks.truncate(tern_wire::limits::MAX_DELIVERY_MARKS);
        Ok(marks)
    }

    /// Full description of a conversation (no membership check: callers check first).
    async fn info(&self, id: ConversationId) -> Result<ConversationInfo, ServiceError> {
        let record = self
            .store
            .conversation(id)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        let mut members = Vec::new();
        for m in self.store.members(id).await.map_err(internal)? {
            let username = self
                .store
                .user_by_id(m.user)
                .await
                .map_err(internal)?
                .map(|u| u.username)
                .unwrap_or_default();
            members.push(Member {
                user: m.user,
                username,
                role: m.role,
            });
        }
        let last_seq = self.store.last_seq(id).await.map_err(internal)?;
        Ok(ConversationInfo {
            conversation: id,
            kind: record.kind,
            name: record.name,
            description: record.description,
            members,
            last_seq,
        })
    }

    pub async fn get(
        &self,
        me: UserId,
        id: ConversationId,
    ) -> Result<ConversationInfo, ServiceError> {
        self.require_member(id, me).await?;
        self.info(id).await
    }

    pub async fn list(&self, me: UserId) -> Result<Vec<ConversationInfo>, ServiceError> {
        let mut out = Vec::new();
        for id in self.store.conversations_of(me).await.map_err(internal)? {
            match self.info(id).await {
                Ok(info) => out.push(info),
                // A membership whose conversation is gone (interrupted creation) is not shown.
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|c| c.conversation);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{group_name_key, group_uniqueness_key, is_forbidden_in_text};
    use tern_wire::ids::UserId;

    #[test]
    fn look_alike_names_share_a_key_per_owner_only() {
        let (a, b) = (UserId::random(), UserId::random());
        // Latin "paypal" and one with a Cyrillic "а" (U+0430); "l" and "I" look alike.
        assert_eq!(
            group_uniqueness_key(a, "paypal"),
            group_uniqueness_key(a, "p\u{0430}ypal")
        );
        assert_eq!(
            group_uniqueness_key(a, "Team"),
            group_uniqueness_key(a, "TEAM")
        );
        assert_ne!(
            group_uniqueness_key(a, "Team"),
            group_uniqueness_key(b, "Team")
        );
        assert_ne!(
            group_uniqueness_key(a, "Team"),
            group_uniqueness_key(a, "Tea")
        );
    }

    #[test]
    fn format_control_and_separator_characters_are_forbidden() {
        for c in [
            '\u{202E}',
            '\u{2066}',
            '\u{200B}',
            '\u{200D}',
            '\u{FEFF}',
            '\u{2028}',
            '\u{2029}',
            '\u{0007}',
            '\u{0085}',
            '\u{00AD}',
            '\u{E0041}',
            '\u{3164}',
        ] {
            assert!(is_forbidden_in_text(c), "{:04X}", c as u32);
        }
        for c in ['a', 'é', 'ж', '中', '😀', ' ', '-'] {
            assert!(!is_forbidden_in_text(c), "{c}");
        }
    }

    #[test]
    fn group_names_compare_ignoring_case_and_normalisation() {
        let key = group_name_key("Café");
        for same in [
            "café",
            "CAFÉ",
            "cafe\u{301}",
            "CAFE\u{301}",
            "ＣＡＦＥ\u{301}",
        ] {
            assert_eq!(group_name_key(same), key, "{same:?}");
        }
        assert_ne!(group_name_key("Cafe"), key);
        assert_eq!(
            group_name_key("ﬁle"),
            group_name_key("FILE"),
            "NFKC folds ligatures"
        );
    }
}
