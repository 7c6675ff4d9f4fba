//! Accounts and sessions: registration, argon2id password hashes, opaque revocable tokens and
//! login rate limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tern_wire::ids::UserId;
use tern_wire::msg::ErrorCode;

use crate::driver::now_ms;
use crate::hash_pool::HashPool;
use crate::password;
use crate::service::ServiceError;
use crate::store::{Store, StoreError, TokenRecord, UserRecord};

pub const MIN_USERNAME_CHARS: usize = 3;
pub const MAX_USERNAME_CHARS: usize = 32;
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Argon2 cost grows with input; an unbounded password is a denial-of-service lever.
pub const MAX_PASSWORD_BYTES: usize = 256;

#[derive(Debug, Clone)]
pub struct AccountLimits {
    pub token_ttl: Duration,
    /// Failed logins allowed per username per window before 429.
    pub failures_per_username: u32,
    /// Login attempts (any outcome) allowed per client address per window before 429.
    pub attempts_per_address: u32,
    pub window: Duration,
    /// Upper bound on tracked usernames/addresses; the limiter forgets expired entries first.
    pub max_tracked_keys: usize,
    /// Threads hashing passwords (each holds one 19 MiB argon2 block); default: one per core.
    pub hash_threads: usize,
    /// Hash jobs waiting for a thread before registrations and logins get `RateLimited`.
    pub hash_queue: usize,
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            failures_per_username: 5,
            attempts_per_address: 30,
            window: Duration::from_secs(60),
            max_tracked_keys: 100_000,
            hash_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            hash_queue: 256,
        }
    }
}

/// Fixed-window counters with a hard size bound. Sans-IO: the caller passes the time.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window_ms: u64,
    max_keys: usize,
    windows: HashMap<String, (u64, u32)>,
}

impl RateLimiter {
    pub fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        assert!(limit > 0 && max_keys > 0, "rate limits must be positive");
        RateLimiter {
            limit,
            window_ms: window.as_millis() as u64,
            max_keys,
            windows: HashMap::new(),
        }
    }

    /// How long the key must wait, or `None` when it is under its limit.
    pub fn check(&self, key: &str, now_ms: u64) -> Option<Duration> {
        let (start, count) = *self.windows.get(key)?;
        let ends = start + self.window_ms;
        (now_ms < ends && count >= self.limit).then(|| Duration::from_millis(ends - now_ms))
    }

    pub fn record(&mut self, key: &str, now_ms: u64) {
        if self.windows.len() >= self.max_keys && !self.windows.contains_key(key) {
            let window = self.window_ms;
            self.windows
                .retain(|_, (start, _)| now_ms < *start + window);
            if self.windows.len() >= self.max_keys {
                // Still full of live windows: drop the oldest rather than grow without bound.
                if let Some(oldest) = self
                    .windows
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(k, _)| k.clone())
                {
                    self.windows.remove(&oldest);
                }
            }
        }
        let entry = self.windows.entry(key.to_owned()).or_insert((now_ms, 0));
        if now_ms >= entry.0 + self.window_ms {
            *entry = (now_ms, 0);
        }
        entry.1 += 1;
    }

    pub fn clear(&mut self, key: &str) {
        self.windows.remove(key);
    }

    pub fn tracked(&self) -> usize {
        self.windows.len()
    }
}

pub struct Accounts {
    store: Arc<dyn Store>,
    limits: AccountLimits,
    by_username: Mutex<RateLimiter>,
    by_address: Mutex<RateLimiter>,
    /// Verified against when the username does not exist, so that a login for an unknown user
    /// costs the same time as a wrong password (no user enumeration by timing).
    dummy_hash: String,
    /// Where every argon2 hash runs (bounded threads, memory and queue).
    hasher: HashPool,
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Session {
    /// The bearer token. Shown once; only its SHA-256 is stored.
    pub token: String,
    pub user: UserRecord,
    pub expires_ms: u64,
}

/// A valid argon2id hash (same parameters as real ones) of a random password nobody knows:
/// logins for unknown users verify against it, costing the same time as a wrong password.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$/8UJqUV9A2txzSKPzSfptg$tos1kg+r+O5EJZjMUhCm6kawOHi3cOuTXpEhqBq3wjA";

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn internal(e: StoreError) -> ServiceError {
    tracing::error!(error = %e, "storage error");
    ServiceError::new(ErrorCode::Internal, "storage error")
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>, limits: AccountLimits) -> Result<Self, ServiceError> {
        Ok(Accounts {
            by_username: Mutex::new(RateLimiter::new(
                limits.failures_per_username,
                limits.window,
                limits.max_tracked_keys,
            )),
            by_address: Mutex::new(RateLimiter::new(
                limits.attempts_per_address,
                limits.window,
                limits.max_tracked_keys,
            )),
            hasher: HashPool::new(limits.hash_threads, limits.hash_queue)?,
            store,
            limits,
            dummy_hash: DUMMY_HASH.to_owned(),
        })
    }

    pub fn validate_username(username: &str) -> Result<(), ServiceError> {
        let chars = username.chars().count();
        if !(MIN_USERNAME_CHARS..=MAX_USERNAME_CHARS).contains(&chars) {
            return Err(ServiceError::invalid(format!(
                "username must be {MIN_USERNAME_CHARS} to {MAX_USERNAME_CHARS} characters"
            )));
        }
        if !username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(ServiceError::invalid(
                "username may contain only letters, digits, '_', '-' and '.'",
            ));
        }
        Ok(())
    }

    /// The length rule for a password chosen at registration.
    pub fn validate_new_password(password: &str) -> Result<(), ServiceError> {
        if !(MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&password.len()) {
            return Err(ServiceError::invalid(format!(
                "password must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Counts one attempt (login or registration) from `address`; refuses it past the limit.
    /// Both cost an argon2 hash, so both are limited before any work is done.
    fn admit_address(&self, address: IpAddr, now: u64) -> Result<(), ServiceError> {
        let key = address.to_string();
        let mut by_address = self
            .by_address
            .lock()
            .map_err(|_| ServiceError::poisoned())?;
        if let Some(wait) = by_address.check(&key, now) {
            return Err(ServiceError::rate_limited(wait));
        }
        by_address.record(&key, now);
        Ok(())
    }

    pub async fn register(
        &self,
        username: &str,
        password: &str,
        address: IpAddr,
    ) -> Result<UserRecord, ServiceError> {
        self.admit_address(address, now_ms())?;
        Self::validate_username(username)?;
        Self::validate_new_password(password)?;
        if self
            .store
            .user_by_name(username)
            .await
            .map_err(internal)?
            .is_some()
        {
            return Err(ServiceError::new(ErrorCode::Conflict, "username is taken"));
        }
        let password = password.to_owned();
        let hash = self
            .hasher
            .run(move || password::hash(&password))
            .await?
            .map_err(|_| ServiceError::new(ErrorCode::Internal, "password hashing failed"))?;
        let user = UserRecord {
            id: UserId::random(),
            username: username.to_owned(),
            password_hash: hash,
            created_ms: now_ms(),
        };
        match self.store.create_user(user.clone()).await {
            Ok(()) => Ok(user),
            Err(StoreError::AlreadyExists(_)) => {
                Err(ServiceError::new(ErrorCode::Conflict, "username is taken"))
            }
            Err(e) => Err(internal(e)),
        }
    }

    /// Checks both rate limits before doing any work, so a flood costs no argon2 time.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        address: IpAddr,
    ) -> Result<Session, ServiceError> {
        let now = now_ms();
        let user_key = username.to_lowercase();
        self.admit_address(address, now)?;
        {
            let by_username = self
                .by_username
                .lock()
                .map_err(|_| ServiceError::poisoned())?;
            if let Some(wait) = by_username.check(&user_key, now) {
                return Err(ServiceError::rate_limited(wait));
            }
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(ServiceError::invalid("password too long"));
        }
        let user = self.store.user_by_name(username).await.map_err(internal)?;
        let stored_hash = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
        let candidate = password.to_owned();
        let verified = self
            .hasher
            .run(move || password::verify(&candidate, &stored_hash))
            .await?;
        let user = match (user, verified) {
            (Some(user), true) => user,
            _ => {
                let mut by_username = self
                    .by_username
                    .lock()
                    .map_err(|_| ServiceError::poisoned())?;
                by_username.record(&user_key, now);
                return Err(ServiceError::new(
                    ErrorCode::Unauthenticated,
                    "wrong username or password",
                ));
            }
        };
        if let Ok(mut by_username) = self.by_username.lock() {
            by_username.clear(&user_key);
        }
        let mut raw = [0u8; 32];
        rand::fill(&mut raw);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let expires_ms = now + self.limits.token_ttl.as_millis() as u64;
        let record = TokenRecord {
            token_hash: hash_token(&token),
            user: user.id,
            created_ms: now,
            expires_ms,
        };
        self.store.put_token(record).await.map_err(internal)?;
        Ok(Session {
            token,
            user,
            expires_ms,
        })
    }

    /// Resolves a bearer token to its (unexpired) record.
    pub async fn authenticate(&self, token: &str) -> Result<TokenRecord, ServiceError> {
        let unauthenticated =
            || ServiceError::new(ErrorCode::Unauthenticated, "invalid or expired token");
        if token.is_empty() || token.len() > 128 {
            return Err(unauthenticated());
        }
        let record = self
            .store
            .token(&hash_token(token))
            .await
            .map_err(internal)?
            .ok_or_else(unauthenticated)?;
        if record.expires_ms <= now_ms() {
            // Expired tokens are removed lazily; failure to remove changes nothing for the caller.
            let _ = self.store.delete_token(&record.token_hash).await;
            return Err(unauthenticated());
        }
        Ok(record)
    }

    /// Revokes the token; returns its hash so the caller can close its live connections.
    pub async fn logout(&self, token: &str) -> Result<[u8; 32], ServiceError> {
        let record = self.authenticate(token).await?;
        self.store
            .delete_token(&record.token_hash)
            .await
            .map_err(internal)?;
        Ok(record.token_hash)
    }

    pub async fn user(&self, id: UserId) -> Result<UserRecord, ServiceError> {
        self.store
            .user_by_id(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| ServiceError::new(ErrorCode::NotFound, "no such user"))
    }

    pub async fn user_by_name(&self, username: &str) -> Result<UserRecord, ServiceError> {
        self.store
            .user_by_name(username)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                ServiceError::new(ErrorCode::NotFound, format!("no such user: {username}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_limit_and_reopens_after_window() {
        let mut limiter = RateLimiter::new(3, Duration::from_secs(10), 100);
        for _ in 0..3 {
            assert_eq!(limiter.check("k", 1_000), None);
            limiter.record("k", 1_000);
        }
        assert_eq!(limiter.check("k", 2_000), Some(Duration::from_secs(9)));
        assert_eq!(limiter.check("other", 2_000), None);
        assert_eq!(limiter.check("k", 11_000), None);
        limiter.record("k", 11_000);
        assert_eq!(
            limiter.check("k", 11_000),
            None,
            "a new window starts with one attempt"
        );
    }

    #[test]
    fn limiter_never_exceeds_its_key_bound() {
        let mut limiter = RateLimiter::new(1, Duration::from_secs(60), 50);
        for i in 0..10_000u64 {
            limiter.record(&format!("key{i}"), i);
            assert!(limiter.tracked() <= 50);
        }
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_costs() {
        let parsed = argon2::password_hash::PasswordHash::new(DUMMY_HASH).expect("valid PHC");
        let params = argon2::Params::try_from(&parsed).expect("argon2 params");
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (password::MEMORY_KIB, password::ITERATIONS, password::LANES)
        );
        assert!(!password::verify("", DUMMY_HASH));
    }

    #[test]
    fn usernames_are_validated() {
        assert!(Accounts::validate_username("alice_01").is_ok());
        assert!(Accounts::validate_username("al").is_err());
        assert!(Accounts::validate_username("ali ce").is_err());
        assert!(Accounts::validate_username("<script>").is_err());
        assert!(Accounts::validate_username(&"a".repeat(33)).is_err());
    }
}
