//! Accounts and sessions: registration, argon2id password hashes, opaque revocable tokens and
//! login rate limits.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tern_wire::ids::UserId;
use tern_wire::msg::ErrorCode;

use crate::client_addr::client_prefix;
use crate::driver::now_ms;
use crate::hash_pool::HashPool;
use crate::password;
use crate::service::ServiceError;
use crate::store::{DeviceRecord, Store, StoreError, TokenRecord, UserRecord};
use tern_wire::ids::DeviceId;

pub const MIN_USERNAME_CHARS: usize = 3;
pub const MAX_USERNAME_CHARS: usize = 32;
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Argon2 cost grows with input; an unbounded password is a denial-of-service lever.
pub const MAX_PASSWORD_BYTES: usize = 256;

#[derive(Debug, Clone)]
pub struct AccountLimits {
    pub token_ttl: Duration,
    /// Failed logins allowed per (username, client address prefix) per window before that pair
    /// gets 429. Keyed by the pair, so that an attacker at one address cannot lock the owner
    /// out at another (the issue-10 finding: 7 failures used to lock the account everywhere).
    pub failures_per_user_address: u32,
    /// Failed logins per username per window, from all addresses together, past which the
    /// username is under attack from many addresses: every pair then gets one failure per
    /// window instead of `failures_per_user_address`. This slows a distributed guesser to one
    /// guess per address per window and never refuses an address that has not failed, so it
    /// cannot be used to lock the owner out.
    pub failures_per_username: u32,
    /// Login and registration attempts (any outcome) allowed per client address prefix
    /// (IPv4 /32, IPv6 /64) per window before 429.
    pub attempts_per_address: u32,
    pub window: Duration,
    /// Registrations allowed per client address prefix per `registration_window`.
    pub registrations_per_address: u32,
    /// Registrations allowed from all addresses together per `registration_window`.
    pub registrations_per_window: u32,
    pub registration_window: Duration,
    /// Upper bound on tracked usernames/addresses; the limiter forgets expired entries first.
    pub max_tracked_keys: usize,
    /// Threads hashing passwords (each holds one 19 MiB argon2 block); default: one per core.
    pub hash_threads: usize,
    /// Hash jobs waiting for a thread before registrations and logins get `RateLimited`.
    pub hash_queue: usize,
    /// Hash jobs one client address prefix may have waiting; its next one gets `RateLimited`
    /// while other clients' jobs are still queued (served round-robin).
    pub hash_queue_per_client: usize,
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            failures_per_user_address: 5,
            failures_per_username: 100,
            attempts_per_address: 30,
            window: Duration::from_secs(60),
            registrations_per_address: 30,
            registrations_per_window: 600,
            registration_window: Duration::from_secs(600),
            max_tracked_keys: 100_000,
            hash_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            hash_queue: 256,
            hash_queue_per_client: 8,
        }
    }
}

/// Fixed-window counters with a hard size bound. Sans-IO: the caller passes the time.
#[derive(Debug)]
pub struct RateLimiter<K = String> {
    limit: u32,
    window_ms: u64,
    max_keys: usize,
    windows: HashMap<K, (u64, u32)>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        assert!(limit > 0 && max_keys > 0, "rate limits must be positive");
        RateLimiter {
            limit,
            window_ms: window.as_millis() as u64,
            max_keys,
            windows: HashMap::new(),
        }
    }

    /// Events recorded for `key` in its current window.
    pub fn count<Q>(&self, key: &Q, now_ms: u64) -> u32
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.windows.get(key) {
            Some(&(start, count)) if now_ms < start + self.window_ms => count,
            _ => 0,
        }
    }

    /// How long the key must wait, or `None` when it is under its limit.
    pub fn check<Q>(&self, key: &Q, now_ms: u64) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.check_with(key, self.limit, now_ms)
    }

    /// Like [`RateLimiter::check`] with another limit (a tightened one).
    pub fn check_with<Q>(&self, key: &Q, limit: u32, now_ms: u64) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (start, count) = *self.windows.get(key)?;
        let ends = start + self.window_ms;
        (now_ms < ends && count >= limit).then(|| Duration::from_millis(ends - now_ms))
    }

    pub fn record<Q>(&mut self, key: &Q, now_ms: u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
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
                    self.windows.remove::<K>(&oldest);
                }
            }
        }
        let window = self.window_ms;
        let entry = match self.windows.get_mut(key) {
            Some(entry) => entry,
            None => self.windows.entry(key.to_owned()).or_insert((now_ms, 0)),
        };
        if now_ms >= entry.0 + window {
            *entry = (now_ms, 0);
        }
        entry.1 += 1;
    }

    pub fn clear<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.windows.remove(key);
    }

    pub fn tracked(&self) -> usize {
        self.windows.len()
    }
}

/// Every login and registration limit, behind one lock (each attempt touches several).
/// Sans-IO: the decisions take `now` and return how long to wait.
pub struct LoginLimits {
    failures_per_user_address: u32,
    /// Attempts per client address prefix (logins and registrations).
    by_address: RateLimiter<IpAddr>,
    /// Failures per (lowercased username, address prefix).
    by_user_address: RateLimiter<(String, IpAddr)>,
    /// Failures per lowercased username, all addresses together.
    by_username: RateLimiter<String>,
    /// Registrations per address prefix, and all together (one key).
    registrations_by_address: RateLimiter<IpAddr>,
    registrations: RateLimiter<()>,
}

impl LoginLimits {
    pub fn new(limits: &AccountLimits) -> Self {
        LoginLimits {
            failures_per_user_address: limits.failures_per_user_address,
            by_address: RateLimiter::new(
                limits.attempts_per_address,
                limits.window,
                limits.max_tracked_keys,
            ),
            by_user_address: RateLimiter::new(
                limits.failures_per_user_address,
                limits.window,
                limits.max_tracked_keys,
            ),
            by_username: RateLimiter::new(
                limits.failures_per_username,
                limits.window,
                limits.max_tracked_keys,
            ),
            registrations_by_address: RateLimiter::new(
                limits.registrations_per_address,
                limits.registration_window,
                limits.max_tracked_keys,
            ),
            registrations: RateLimiter::new(
                limits.registrations_per_window,
                limits.registration_window,
                1,
            ),
        }
    }

    /// A login attempt for `user_key` (lowercased username) from `client` (address prefix):
    /// counted against the address, refused while the pair is over its failure limit.
    pub fn admit_login(
        &mut self,
        user_key: &str,
        client: IpAddr,
        now: u64,
    ) -> Result<(), Duration> {
        if let Some(wait) = self.by_address.check(&client, now) {
            return Err(wait);
        }
        self.by_address.record(&client, now);
        // Under attack from many addresses: one failure per pair and window.
        let per_pair = if self.by_username.check(user_key, now).is_some() {
            1
        } else {
            self.failures_per_user_address
        };
        let pair = (user_key.to_owned(), client);
        match self.by_user_address.check_with(&pair, per_pair, now) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    pub fn login_failed(&mut self, user_key: &str, client: IpAddr, now: u64) {
        self.by_user_address
            .record(&(user_key.to_owned(), client), now);
        self.by_username.record(user_key, now);
    }

    /// A success forgets the pair's failures (the owner mistyping twice is not held against
    /// them), but not the username's: an attacker's count stays.
    pub fn login_succeeded(&mut self, user_key: &str, client: IpAddr) {
        self.by_user_address.clear(&(user_key.to_owned(), client));
    }

    /// A registration from `client`: counted against its address attempts, its registrations
    /// and the global registration ceiling, refused past any of them.
    pub fn admit_registration(&mut self, client: IpAddr, now: u64) -> Result<(), Duration> {
        let wait = self
            .by_address
            .check(&client, now)
            .or_else(|| self.registrations_by_address.check(&client, now))
            .or_else(|| self.registrations.check(&(), now));
        if let Some(wait) = wait {
            return Err(wait);
        }
        self.by_address.record(&client, now);
        self.registrations_by_address.record(&client, now);
        self.registrations.record(&(), now);
        Ok(())
    }
}

pub struct Accounts {
    store: Arc<dyn Store>,
    limits: AccountLimits,
    login_limits: Mutex<LoginLimits>,
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
            login_limits: Mutex::new(LoginLimits::new(&limits)),
            hasher: HashPool::new(
                limits.hash_threads,
                limits.hash_queue,
                limits.hash_queue_per_client,
            )?,
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

    fn limits(&self) -> Result<std::sync::MutexGuard<'_, LoginLimits>, ServiceError> {
        self.login_limits
            .lock()
            .map_err(|_| ServiceError::poisoned())
    }

    pub async fn register(
        &self,
        username: &str,
        password: &str,
        address: IpAddr,
    ) -> Result<UserRecord, ServiceError> {
        let now = now_ms();
        let client = client_prefix(address);
        // Registration costs an argon2 hash like a login, so it counts against the per-address
        // attempts too; its own limits (per address and all together) are what stop account
        // farming (4,000 accounts a minute from three addresses).
        self.limits()?
            .admit_registration(client, now)
            .map_err(ServiceError::rate_limited)?;
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
            .run(client, move || password::hash(&password))
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

    /// Checks the rate limits before doing any work, so a flood costs no argon2 time.
    ///
    /// Failures count per (username, address prefix), so the owner at another address is
    /// never refused because of someone else's guesses; see [`AccountLimits`] for the
    /// per-username ceiling that slows distributed guessing without locking anybody out.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        address: IpAddr,
    ) -> Result<Session, ServiceError> {
        let now = now_ms();
        let client = client_prefix(address);
        let user_key = username.to_lowercase();
        self.limits()?
            .admit_login(&user_key, client, now)
            .map_err(ServiceError::rate_limited)?;
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
            .run(client, move || password::verify(&candidate, &stored_hash))
            .await?;
        let user = match (user, verified) {
            (Some(user), true) => user,
            _ => {
                self.limits()?.login_failed(&user_key, client, now);
                return Err(ServiceError::new(
                    ErrorCode::Unauthenticated,
                    "wrong username or password",
                ));
            }
        };
        if let Ok(mut limits) = self.login_limits.lock() {
            limits.login_succeeded(&user_key, client);
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

    /// "Log out everywhere": revokes every token of the user. The caller closes the user's
    /// live connections (`Input::UserRevoked`).
    pub async fn logout_all(&self, user: UserId) -> Result<usize, ServiceError> {
        let revoked = self.store.delete_tokens_of(user).await.map_err(internal)?;
        Ok(revoked.len())
    }

    /// Whether the token with this hash still exists and has not expired.
    pub async fn token_is_live(
        &self,
        token_hash: &[u8; 32],
        now: u64,
    ) -> Result<bool, ServiceError> {
        Ok(self
            .store
            .token(token_hash)
            .await
            .map_err(internal)?
            .is_some_and(|t| t.expires_ms > now))
    }

    /// Binds `device` to the token's user (and to the token), or refuses it.
    ///
    /// - An unknown device is bound to this user and token.
    /// - A device of another user is refused (`Forbidden`), changing nothing: device ids are
    ///   public (every `Deliver` carries one), so this is what stops another user from acking
    ///   the victim's cursors away.
    /// - A device of this user bound to this token is fine.
    /// - A device of this user bound to another token is taken over only when that token is
    ///   revoked or expired (log out, log in again on the same device); while it is live the
    ///   device is in use by another session and is refused.
    pub async fn bind_device(
        &self,
        device: DeviceId,
        token: &TokenRecord,
    ) -> Result<(), ServiceError> {
        let forbidden = |why: &str| ServiceError::new(ErrorCode::Forbidden, why.to_owned());
        // Each round either finishes or lost a compare-and-set to a concurrent binding, which
        // changed the record; three rounds cover any realistic contention.
        for _ in 0..3 {
            let now = now_ms();
            let record = DeviceRecord {
                device,
                user: token.user,
                token_hash: token.token_hash,
                bound_ms: now,
            };
            let expected = match self.store.device(device).await.map_err(internal)? {
                None => None,
                Some(bound) if bound.user != token.user => {
                    return Err(forbidden("this device id belongs to another user"));
                }
                Some(bound) if bound.token_hash == token.token_hash => return Ok(()),
                Some(bound) => {
                    if self.token_is_live(&bound.token_hash, now).await? {
                        return Err(forbidden(
                            "this device is in use by another session of this user; log out there first",
                        ));
                    }
                    Some(bound.token_hash)
                }
            };
            if self
                .store
                .bind_device(record, expected)
                .await
                .map_err(internal)?
            {
                return Ok(());
            }
        }
        Err(ServiceError::new(
            ErrorCode::Conflict,
            "the device is being bound concurrently; retry",
        ))
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
        let mut limiter = RateLimiter::<String>::new(3, Duration::from_secs(10), 100);
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
        let mut limiter = RateLimiter::<String>::new(1, Duration::from_secs(60), 50);
        for i in 0..10_000u64 {
            limiter.record(&format!("key{i}"), i);
            assert!(limiter.tracked() <= 50);
        }
    }

    const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const OWNER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    fn limits() -> AccountLimits {
        AccountLimits {
            failures_per_user_address: 5,
            failures_per_username: 20,
            attempts_per_address: 1_000,
            registrations_per_address: 30,
            registrations_per_window: 100,
            ..AccountLimits::default()
        }
    }

    #[test]
    fn failures_at_one_address_never_lock_the_owner_out_at_another() {
        let mut l = LoginLimits::new(&limits());
        for _ in 0..5 {
            assert_eq!(l.admit_login("victim", ATTACKER, 1_000), Ok(()));
            l.login_failed("victim", ATTACKER, 1_000);
        }
        assert!(
            l.admit_login("victim", ATTACKER, 1_000).is_err(),
            "the guessing pair is stopped"
        );
        assert_eq!(
            l.admit_login("victim", OWNER, 1_000),
            Ok(()),
            "the owner is not"
        );
        assert_eq!(
            l.admit_login("someone-else", ATTACKER, 1_000),
            Ok(()),
            "other usernames are judged on their own"
        );
        assert_eq!(
            l.admit_login("victim", ATTACKER, 61_000),
            Ok(()),
            "the pair gets a new window"
        );
    }

    #[test]
    fn many_addresses_tighten_each_pair_to_one_failure_but_lock_nobody() {
        let mut l = LoginLimits::new(&limits());
        // 20 failures from 10 addresses: the username's ceiling is reached.
        for i in 0..10u8 {
            let from = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, i));
            for _ in 0..2 {
                assert_eq!(l.admit_login("victim", from, 1_000), Ok(()));
                l.login_failed("victim", from, 1_000);
            }
        }
        let fresh = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(l.admit_login("victim", fresh, 1_000), Ok(()));
        l.login_failed("victim", fresh, 1_000);
        assert!(
            l.admit_login("victim", fresh, 1_000).is_err(),
            "under attack, a pair gets one failure per window, not five"
        );
        assert_eq!(
            l.admit_login("victim", OWNER, 1_000),
            Ok(()),
            "an address that has not failed is still admitted"
        );
        l.login_succeeded("victim", OWNER);
        assert_eq!(l.admit_login("victim", OWNER, 2_000), Ok(()));
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let mut l = LoginLimits::new(&limits());
        for i in 0..5u16 {
            let from = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i));
            let client = client_prefix(from);
            assert_eq!(l.admit_login("victim", client, 1_000), Ok(()));
            l.login_failed("victim", client, 1_000);
        }
        let rotated = IpAddr::V6(std::net::Ipv6Addr::new(
            0x2001, 0xdb8, 0, 1, 0xffff, 1, 2, 3,
        ));
        assert!(
            l.admit_login("victim", client_prefix(rotated), 1_000)
                .is_err(),
            "a new address in the same /64 is the same client"
        );
    }

    #[test]
    fn registrations_stop_per_address_and_all_together() {
        let mut l = LoginLimits::new(&limits());
        let addresses: Vec<IpAddr> = (2..5u8)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, i)))
            .collect();
        let mut admitted = 0;
        for _ in 0..4_000 / 3 {
            for &a in &addresses {
                if l.admit_registration(a, 1_000).is_ok() {
                    admitted += 1;
                }
            }
        }
        assert_eq!(admitted, 90, "30 per address per window");
        let mut others = 0;
        for i in 0..200u8 {
            if l.admit_registration(IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i)), 1_000)
                .is_ok()
            {
                others += 1;
            }
        }
        assert_eq!(others, 10, "the global ceiling (100 per window) holds");
        assert!(
            l.admit_registration(addresses[0], 601_000).is_ok(),
            "a new window admits again"
        );
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
