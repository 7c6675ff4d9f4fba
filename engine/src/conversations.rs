//! Conversation management: create 1:1 and group conversations, list them, read history.
//! Every read and write checks membership.

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
    ConversationRecord, HistoryFrom, HistoryQuery, MemberRecord, Store, StoreError,
};

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

/// Text the server shows to others (names, descriptions): no control characters.
fn validate_text(
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
        self.store
            .create_conversation(record, records)
            .await
            .map_err(internal)?;
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
        self.require_member(conversation, me).await?;
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
