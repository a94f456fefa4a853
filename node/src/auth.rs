//! Accounts and sessions: argon2id password hashes computed off the async runtime behind a
//! concurrency limit, and opaque random bearer tokens stored only as SHA-256 hashes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chat_cluster::{MetaCommand, MetaResponse, Metadata};
use chat_types::{validate_password, validate_username, ErrorCode, UserId, WireError};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// How long a node waits for replicated metadata (a user or session created through another
/// node) to reach its local copy before it answers "unknown".
const CATCH_UP: Duration = Duration::from_millis(1500);

type HashJob = Box<dyn FnOnce() + Send>;

/// A few dedicated threads for password hashing. Each argon2id hash takes ~19 MiB; on
/// tokio's blocking pool (up to hundreds of threads, shared with log writes) every thread
/// that ever hashed would keep that memory in its allocator arena. Here only these threads do.
struct HashPool {
    jobs: std::sync::mpsc::Sender<HashJob>,
}

impl HashPool {
    fn new(threads: usize) -> HashPool {
        let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("chat-hash-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        HashPool { jobs: tx }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WireError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(internal)?;
        rx.await.map_err(internal)
    }
}

pub struct Auth {
    meta: Arc<Metadata>,
    hashing: HashPool,
    /// argon2id memory cost for new hashes (verification reads it from the stored hash).
    memory_kib: u32,
}

/// An authenticated user.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: UserId,
    pub username: String,
    pub token_hash: String,
}

/// argon2id with the given memory cost, two passes, one lane (the defaults but memory).
fn hasher(memory_kib: u32) -> Argon2<'static> {
    let params = argon2::Params::new(memory_kib, 2, 1, None).unwrap_or_default();
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Wall-clock milliseconds, for the timestamps that commands carry (the state machine reads no
/// clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn internal(e: impl std::fmt::Display) -> WireError {
    tracing::error!(error = %e, "auth failure");
    WireError::new(ErrorCode::Internal, "internal error")
}

impl Auth {
    pub fn new(meta: Arc<Metadata>, hash_concurrency: usize, memory_kib: u32) -> Self {
        Auth {
            meta,
            hashing: HashPool::new(hash_concurrency),
            memory_kib,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WireError> {
        self.hashing.run(f).await
    }

    pub async fn register(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(UserId, String), WireError> {
        let username = validate_username(username)
            .map_err(|e| WireError::new(ErrorCode::InvalidArgument, e.to_string()))?;
        validate_password(password)
            .map_err(|e| WireError::new(ErrorCode::InvalidArgument, e.to_string()))?;
        if self.meta.read(|s| s.user_by_name(&username).is_some()) {
            return Err(WireError::new(ErrorCode::Conflict, "username is taken"));
        }
        let memory_kib = self.memory_kib;
        let password = password.to_owned();
        let hash = self
            .blocking(move || {
                let salt = SaltString::generate(&mut rand::rngs::OsRng);
                hasher(memory_kib)
                    .hash_password(password.as_bytes(), &salt)
                    .map(|h| h.to_string())
            })
            .await?
            .map_err(internal)?;
        let cmd = MetaCommand::RegisterUser {
            username: username.clone(),
            password_hash: hash,
            now_ms: now_ms(),
        };
        match self.meta.write(cmd).await.map_err(|e| e.to_wire())? {
            MetaResponse::Registered { user_id } => Ok((user_id, username)),
            MetaResponse::UsernameTaken => {
                Err(WireError::new(ErrorCode::Conflict, "username is taken"))
            }
            other => Err(internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Checks the password and creates a session. Returns the token, shown only this once.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(String, UserId, String), WireError> {
        let denied = || WireError::new(ErrorCode::Unauthorized, "wrong username or password");
        let username = validate_username(username).map_err(|_| denied())?;
        let account = self
            .wait_for(|s| s.user_by_name(&username).cloned())
            .await
            .ok_or_else(denied)?;
        let password = password.to_owned();
        let stored = account.password_hash.clone();
        let ok = self
            .blocking(move || {
                PasswordHash::new(&stored)
                    .map(|h| {
                        Argon2::default()
                            .verify_password(password.as_bytes(), &h)
                            .is_ok()
                    })
                    .unwrap_or(false)
            })
            .await?;
        if !ok {
            return Err(denied());
        }
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let token = hex::encode(raw);
        let cmd = MetaCommand::CreateSession {
            token_hash: token_hash(&token),
            user_id: account.user_id,
            now_ms: now_ms(),
        };
        match self.meta.write(cmd).await.map_err(|e| e.to_wire())? {
            MetaResponse::SessionCreated => Ok((token, account.user_id, account.username)),
            other => Err(internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn logout(&self, principal: &Principal) -> Result<(), WireError> {
        let cmd = MetaCommand::RevokeSession {
            token_hash: principal.token_hash.clone(),
        };
        self.meta.write(cmd).await.map_err(|e| e.to_wire())?;
        Ok(())
    }

    /// Resolves a bearer token to its user.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, WireError> {
        let denied =
            || WireError::new(ErrorCode::Unauthorized, "missing, unknown or revoked token");
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(denied());
        }
        let hash = token_hash(token);
        let found = self
            .wait_for(|s| {
                let rec = s.session(&hash)?;
                let account = s.user(rec.user_id)?;
                Some((account.user_id, account.username.clone()))
            })
            .await;
        let (user_id, username) = found.ok_or_else(denied)?;
        Ok(Principal {
            user_id,
            username,
            token_hash: hash,
        })
    }

    /// Reads the local metadata; when the answer is not there yet, waits a little for
    /// replication to bring it (a write made through another node a moment ago).
    pub async fn wait_for<T>(
        &self,
        f: impl Fn(&chat_cluster::MetaState) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            if let Some(v) = self.meta.read(&f) {
                return Some(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
