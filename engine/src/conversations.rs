//! Conversation management: create 1:1 and group conversations, list them, read history,
//! and manage group membership. Every read and write checks membership.
//!
//! # Groups
//!
//! - Names are unique across the server, compared by [`group_name_key`] (NFKC, lowercased,
//!   NFKC again): "Café", "CAFÉ" and "cafe\u{301}" are one name. The store claims the key
//!   atomically with the creation, so of two concurrent creations one gets `Conflict`.
//! - The creator is the group's owner (`MemberRole::Owner`) and the only one who invites, adds
//!   and removes members.
//! - Joining is by invitation only (or a direct add by the owner): `AcceptInvite` without a
//!   pending invitation is `NotFound`. Declining tells the inviter (`InviteDeclined`).
//! - Removal and leaving end the membership in the store first (`is_member` false, the
//!   conversation leaves `conversations_of`, so resume skips it), then tell the engine
//!   (`MembersChanged`), so fan-out stops before the request is answered. The store keeps a
//!   departure record with the highest seq stored at that moment; a former member may still
//!   read history up to it, never beyond.
//! - The owner may leave only when no other member remains (no ownership transfer yet).

use std::sync::Arc;

use tern_wire::ids::{ConversationId, UserId};
use tern_wire::msg::{
    ConversationInfo, ConversationKind, ErrorCode, Member, MemberRole, Message, ServerMessage,
};
use tokio::sync::Mutex;

use crate::core::Input;
use crate::driver::{EngineHandle, now_ms};
use crate::service::ServiceError;
use crate::store::{
    ConversationRecord, HistoryFrom, HistoryQuery, InvitationRecord, MemberRecord, Store,
    StoreError,
};

/// Most pending invitations one user may hold; further invitations are refused.
pub const MAX_PENDING_INVITATIONS: usize = 1_000;

/// The key under which group names are unique: NFKC, lowercased, NFKC again (lowercasing can
/// denormalise). Not full case folding ("ß" and "ss" stay distinct).
pub fn group_name_key(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let lowered: String = name.nfkc().collect::<String>().to_lowercase();
    lowered.nfkc().collect()
}

#[derive(Debug, Clone)]
pub struct ConversationLimits {
    pub max_name_chars: usize,
    pub max_description_chars: usize,
    /// Members per group, the creator included.
    pub max_group_members: usize,
    /// Largest history page; bigger requests are clamped.
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

/// Text the server shows to others (names, descriptions): no control characters. Returns the
/// trimmed text. Pure (public for the `http_json` fuzz target).
pub fn validate_text(
    what: &str,
    value: &str,
    max_chars: usize,
    allow_empty: bool,
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
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ServiceError::invalid(format!(
            "{what} contains control characters"
        )));
    }
    Ok(value.to_owned())
}

impl Conversations {
    pub fn new(store: Arc<dyn Store>, engine: EngineHandle, limits: ConversationLimits) -> Self {
        Conversations {
            store,
            engine,
            limits,
            direct_creation: Mutex::new(()),
        }
    }

    /// Opens the 1:1 conversation between `me` and `peer`, creating it on first use.
    /// Returns the conversation and whether it was created now.
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
        if self
            .store
            .user_by_id(peer)
            .await
            .map_err(internal)?
            .is_none()
        {
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
        }
        let info = self.info(id).await?;
        if created {
            self.announce(&info).await;
        }
        Ok((info, created))
    }

    pub async fn create_group(
        &self,
        me: UserId,
        name: &str,
        description: &str,
        members: &[UserId],
    ) -> Result<ConversationInfo, ServiceError> {
        let name = validate_text("name", name, self.limits.max_name_chars, false)?;
        let display = name.clone();
        let description = validate_text(
            "description",
            description,
            self.limits.max_description_chars,
            true,
        )?;
        let mut records = vec![MemberRecord {
            user: me,
            role: MemberRole::Owner,
        }];
        for user in members {
            if records.iter().any(|m| m.user == *user) {
                continue;
            }
            records.push(MemberRecord {
                user: *user,
                role: MemberRole::Member,
            });
            if records.len() > self.limits.max_group_members {
                return Err(ServiceError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "a group has at most {} members",
                        self.limits.max_group_members
                    ),
                ));
            }
        }
        let id = ConversationId::random();
        let record = ConversationRecord {
            id,
            kind: ConversationKind::Group,
            name,
            description,
            created_by: me,
            created_ms: now_ms(),
        };
        let name_key = group_name_key(&record.name);
        match self
            .store
            .create_named_group(record, records, name_key)
            .await
        {
            Ok(()) => {}
            Err(StoreError::AlreadyExists(_)) => {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    format!(
                        "a group named {display:?} already exists (names are compared ignoring case and Unicode normalisation)"
                    ),
                ));
            }
            Err(e) => return Err(internal(e)),
        }
        let info = self.info(id).await?;
        self.announce(&info).await;
        Ok(info)
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
        let members = self
            .store
            .members(conversation)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|m| m.user)
            .collect();
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
        if self
            .store
            .invitation(conversation, me)
            .await
            .map_err(internal)?
            .is_none()
        {
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

    /// Declines a pending invitation; the inviter is told with `InviteDeclined`.
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

    /// The owner adds `user` directly (no invitation needed). Every member gets the updated
    /// `Conversation`.
    pub async fn add_member(
        &self,
        me: UserId,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<ConversationInfo, ServiceError> {
        self.owned_group(me, conversation).await?;
        self.require_user(user).await?;
        self.require_room(conversation).await?;
        let member = MemberRecord {
            user,
            role: MemberRole::Member,
        };
        match self.store.add_member(conversation, member).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    "the user already is a member",
                ));
            }
            Err(StoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(internal(e)),
        }
        self.members_changed(conversation).await?;
        let info = self.info(conversation).await?;
        self.announce(&info).await;
        Ok(info)
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
        let mut users: Vec<UserId> = self
            .store
            .members(conversation)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|m| m.user)
            .collect();
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

    /// One page of history, ascending by seq, and whether more exists in the paging direction.
    pub async fn history(
        &self,
        me: UserId,
        conversation: ConversationId,
        before_seq: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<(Vec<Message>, bool), ServiceError> {
        // Former members read up to their departure, never beyond.
        let mut before_seq = before_seq;
        if !self
            .store
            .is_member(conversation, me)
            .await
            .map_err(internal)?
        {
            let Some(at) = self
                .store
                .departure(conversation, me)
                .await
                .map_err(internal)?
            else {
                return Err(not_found());
            };
            let cap = at.saturating_add(1);
            before_seq = if before_seq == 0 {
                cap
            } else {
                before_seq.min(cap)
            };
            if cap <= 1 || after_seq.saturating_add(1) >= before_seq {
                return Ok((Vec::new(), false));
            }
        }
        let limit = limit.clamp(1, self.limits.max_history_page);
        // Catching up (after_seq set) reads forward; otherwise scroll back from before_seq.
        // Ask for one more than the page to learn whether there is more.
        let from = if after_seq > 0 {
            HistoryFrom::Oldest
        } else {
            HistoryFrom::Newest
        };
        let query = HistoryQuery {
            conversation,
            before_seq,
            after_seq,
            limit: limit + 1,
            from,
        };
        let mut messages = self.store.history(query).await.map_err(internal)?;
        let has_more = messages.len() > limit as usize;
        if has_more {
            if after_seq > 0 {
                messages.truncate(limit as usize);
            } else {
                messages.remove(0);
            }
        }
        Ok((messages, has_more))
    }
}

#[cfg(test)]
mod tests {
    use super::group_name_key;

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
