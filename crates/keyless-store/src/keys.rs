//! The key manager: where CA, JWT and checkpoint signing keys and the
//! key-encryption keys (KEKs) of envelope encryption live.
//!
//! Callers never see private key bytes: they get a [`Signer`] that signs or a
//! [`Sealer`] that seals and opens (AES-256-GCM). That is what lets a PKCS#11
//! token or a cloud KMS plug in behind the same traits later. The embedded
//! backend, [`FileKeyManager`], keeps one file per key under `DIR/keys/`
//! (directory 0700, files 0600): PKCS#8 for signing keys, 32 raw bytes for a
//! KEK (`NAME.aes256gcm.key`). It never logs key material.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair,
};

use crate::StoreError;

/// Algorithms the key manager can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (JWS `ES256`, X.509 `ecdsa-with-SHA256`).
    EcdsaP256,
    /// Ed25519 (C2SP signed notes).
    Ed25519,
}

impl KeyAlgorithm {
    fn file_suffix(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "p256.p8",
            Self::Ed25519 => "ed25519.p8",
        }
    }
}

/// A private key that can sign but never hands out its secret.
pub trait Signer: Send + Sync + std::fmt::Debug {
    /// The key's name in the key manager.
    fn name(&self) -> &str;
    fn algorithm(&self) -> KeyAlgorithm;
    /// The public key: an uncompressed SEC1 point for P-256, 32 raw bytes for Ed25519.
    fn public_key(&self) -> &[u8];
    /// A signature in the JOSE/raw form: `r‖s` (64 bytes) for P-256, 64 bytes for Ed25519.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// A signature in the X.509 form: ASN.1 DER `ECDSA-Sig-Value` for P-256;
    /// the same as [`Signer::sign`] for Ed25519.
    fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, StoreError>;
}

/// An AES-256-GCM key-encryption key held by the key manager; its secret never leaves it.
///
/// Nonces are random (96 bits), so one KEK must not seal more than about 2^32
/// messages; wrapping one data key per secret stays far below that.
pub trait Sealer: Send + Sync + std::fmt::Debug {
    /// The key's name in the key manager (store it next to what it sealed,
    /// so a newer KEK can be introduced without losing the older ones).
    fn name(&self) -> &str;
    /// nonce ‖ ciphertext ‖ tag, authenticated with `aad`.
    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// Fails ([`StoreError::Unseal`]) if the ciphertext or the aad was altered or moved.
    fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError>;
}

/// Bytes a [`Sealer`] adds to a plaintext: the nonce and the GCM tag.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 16;

/// Holds signing keys and key-encryption keys by name.
#[async_trait]
pub trait KeyManager: Send + Sync + std::fmt::Debug {
    /// Creates a new key; fails with [`StoreError::KeyExists`] if the name is taken.
    async fn generate(&self, name: &str, alg: KeyAlgorithm) -> Result<Arc<dyn Signer>, StoreError>;
    /// Loads an existing key.
    async fn load(&self, name: &str) -> Result<Arc<dyn Signer>, StoreError>;
    /// Destroys a key. Destroying a missing key is not an error.
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// Names of every key held (signing keys and KEKs).
    async fn list(&self) -> Result<Vec<String>, StoreError>;
    /// Loads the named AES-256-GCM key-encryption key, creating it on first
    /// use (a private 0600 file for the embedded backend). Two processes
    /// creating the same name at once end up with the same key.
    async fn sealer(&self, name: &str) -> Result<Arc<dyn Sealer>, StoreError>;
    /// One line saying where keys live and how they are protected (for `doctor`).
    fn describe(&self) -> String;
}

fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidKeyName(name.to_owned()))
    }
}

/// Overwrites key bytes before they are freed; `black_box` keeps the
/// compiler from removing the writes as dead stores (best effort, no `unsafe`).
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}

/// File suffix of a KEK held by [`FileKeyManager`].
const KEK_SUFFIX: &str = "aes256gcm.key";
const KEK_LEN: usize = 32;

// === impl FileKeyManager ===

/// The embedded key manager: PKCS#8 files under a private directory.
#[derive(Debug)]
pub struct FileKeyManager {
    dir: PathBuf,
    cache: Mutex<HashMap<String, Arc<dyn Signer>>>,
    sealers: Mutex<HashMap<String, Arc<dyn Sealer>>>,
}

impl FileKeyManager {
    /// Opens (creating with mode 0700) the key directory. An existing
    /// directory that others can read is refused rather than silently fixed.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let mode = fs::metadata(dir).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::LoosePermissions {
                path: dir.display().to_string(),
                mode,
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            cache: Mutex::new(HashMap::new()),
            sealers: Mutex::new(HashMap::new()),
        })
    }

    fn path_for(&self, name: &str, alg: KeyAlgorithm) -> PathBuf {
        self.dir.join(format!("{name}.{}", alg.file_suffix()))
    }

    fn find(&self, name: &str) -> Option<(PathBuf, KeyAlgorithm)> {
        [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519]
            .into_iter()
            .map(|alg| (self.path_for(name, alg), alg))
            .find(|(p, _)| p.exists())
    }

    fn kek_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{KEK_SUFFIX}"))
    }

    /// Reads a KEK file, or creates it if absent without ever replacing one
    /// that exists: the new key is written to a private temp file, fsynced,
    /// then hard-linked into place (which fails if another process won).
    fn read_or_create_kek(&self, name: &str) -> Result<Arc<dyn Sealer>, StoreError> {
        let path = self.kek_path(name);
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            let mut key = [0u8; KEK_LEN];
            SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| StoreError::InvalidKey(name.to_owned()))?;
            static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = self
                .dir
                .join(format!(".{name}.{}.{n}.tmp", std::process::id()));
            let written = (|| {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&key)?;
                f.sync_all()
            })();
            wipe(&mut key);
            let linked = written.and_then(|()| fs::hard_link(&tmp, &path));
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    if let Ok(d) = fs::File::open(&self.dir) {
                        let _ = d.sync_all();
                    }
                    tracing::info!(key = name, "generated key-encryption key");
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        let mut bytes = fs::read(&path).map_err(io)?;
        let sealer = AesGcmSealer::new(name, &bytes);
        wipe(&mut bytes);
        Ok(Arc::new(sealer?))
    }

    fn cached(&self, name: &str) -> Option<Arc<dyn Signer>> {
        self.cache.lock().ok()?.get(name).cloned()
    }

    fn remember(&self, signer: Arc<dyn Signer>) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(signer.name().to_owned(), signer);
        }
    }
}

#[async_trait]
impl KeyManager for FileKeyManager {
    async fn generate(&self, name: &str, alg: KeyAlgorithm) -> Result<Arc<dyn Signer>, StoreError> {
        validate_name(name)?;
        if self.find(name).is_some() {
            return Err(StoreError::KeyExists(name.to_owned()));
        }
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            KeyAlgorithm::EcdsaP256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| StoreError::InvalidKey(name.to_owned()))?
                    .as_ref()
                    .to_vec()
            }
            KeyAlgorithm::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| StoreError::InvalidKey(name.to_owned()))?
                .as_ref()
                .to_vec(),
        };
        let signer = signer_from_pkcs8(name, alg, &pkcs8)?;
        let path = self.path_for(name, alg);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        // Write to a private temp file, fsync, then rename: a crash leaves
        // either no key or the whole key, never a truncated one.
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(&pkcs8).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, &path).map_err(io)?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.remember(signer.clone());
        tracing::info!(key = name, "generated key");
        Ok(signer)
    }

    async fn load(&self, name: &str) -> Result<Arc<dyn Signer>, StoreError> {
        validate_name(name)?;
        if let Some(s) = self.cached(name) {
            return Ok(s);
        }
        let (path, alg) = self
            .find(name)
            .ok_or_else(|| StoreError::KeyNotFound(name.to_owned()))?;
        let pkcs8 = fs::read(&path).map_err(|source| StoreError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let signer = signer_from_pkcs8(name, alg, &pkcs8)?;
        self.remember(signer.clone());
        Ok(signer)
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(name);
        }
        if let Ok(mut sealers) = self.sealers.lock() {
            sealers.remove(name);
        }
        let kek = self.kek_path(name);
        let paths = self
            .find(name)
            .map(|(p, _)| p)
            .into_iter()
            .chain(kek.exists().then_some(kek));
        for path in paths {
            fs::remove_file(&path).map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let io = |source| StoreError::Io {
            path: self.dir.display().to_string(),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let file = entry
                .map_err(io)?
                .file_name()
                .to_string_lossy()
                .into_owned();
            let suffixes = [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519]
                .map(KeyAlgorithm::file_suffix)
                .into_iter()
                .chain([KEK_SUFFIX]);
            for suffix in suffixes {
                if let Some(n) = file.strip_suffix(&format!(".{suffix}"))
                    && !n.starts_with('.')
                {
                    names.push(n.to_owned());
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn sealer(&self, name: &str) -> Result<Arc<dyn Sealer>, StoreError> {
        validate_name(name)?;
        if let Some(s) = self.sealers.lock().ok().and_then(|c| c.get(name).cloned()) {
            return Ok(s);
        }
        let sealer = self.read_or_create_kek(name)?;
        if let Ok(mut sealers) = self.sealers.lock() {
            sealers.insert(name.to_owned(), sealer.clone());
        }
        Ok(sealer)
    }

    fn describe(&self) -> String {
        format!(
            "file key manager at {} (PKCS#8 and raw AES-256 key files, directory 0700, files 0600, not encrypted)",
            self.dir.display()
        )
    }
}

fn signer_from_pkcs8(
    name: &str,
    alg: KeyAlgorithm,
    pkcs8: &[u8],
) -> Result<Arc<dyn Signer>, StoreError> {
    let bad = || StoreError::InvalidKey(name.to_owned());
    Ok(match alg {
        KeyAlgorithm::EcdsaP256 => {
            let fixed = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                .map_err(|_| bad())?;
            let der = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8)
                .map_err(|_| bad())?;
            let public = fixed.public_key().as_ref().to_vec();
            Arc::new(P256Signer {
                name: name.to_owned(),
                fixed,
                der,
                public,
            })
        }
        KeyAlgorithm::Ed25519 => {
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| bad())?;
            let public = pair.public_key().as_ref().to_vec();
            Arc::new(Ed25519Signer {
                name: name.to_owned(),
                pair,
                public,
            })
        }
    })
}

struct P256Signer {
    name: String,
    fixed: EcdsaKeyPair,
    der: EcdsaKeyPair,
    public: Vec<u8>,
}

// Deliberately prints no key material.
impl std::fmt::Debug for P256Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P256Signer")
            .field("name", &self.name)
            .finish()
    }
}

impl Signer for P256Signer {
    fn name(&self) -> &str {
        &self.name
    }
    fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::EcdsaP256
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, StoreError> {
        let rng = SystemRandom::new();
        self.fixed
            .sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| StoreError::Signing(self.name.clone()))
    }
    fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, StoreError> {
        let rng = SystemRandom::new();
        self.der
            .sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| StoreError::Signing(self.name.clone()))
    }
}

struct Ed25519Signer {
    name: String,
    pair: Ed25519KeyPair,
    public: Vec<u8>,
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("name", &self.name)
            .finish()
    }
}

impl Signer for Ed25519Signer {
    fn name(&self) -> &str {
        &self.name
    }
    fn algorithm(&self) -> KeyAlgorithm {
        KeyAlgorithm::Ed25519
    }
    fn public_key(&self) -> &[u8] {
        &self.public
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, StoreError> {
        Ok(self.pair.sign(message).as_ref().to_vec())
    }
    fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.sign(message)
    }
}

// === impl AesGcmSealer ===

/// A KEK in memory. aws-lc keeps the key schedule in memory it cleanses
/// when the key is dropped; the raw bytes are zeroed right after loading.
struct AesGcmSealer {
    name: String,
    key: RandomizedNonceKey,
}

impl AesGcmSealer {
    fn new(name: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() != KEK_LEN {
            return Err(StoreError::InvalidKey(name.to_owned()));
        }
        let key = RandomizedNonceKey::new(&AES_256_GCM, bytes)
            .map_err(|_| StoreError::InvalidKey(name.to_owned()))?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }
}

// Deliberately prints no key material.
impl std::fmt::Debug for AesGcmSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AesGcmSealer")
            .field("name", &self.name)
            .finish()
    }
}

impl Sealer for AesGcmSealer {
    fn name(&self) -> &str {
        &self.name
    }

    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut body = Vec::with_capacity(plaintext.len() + 16);
        body.extend_from_slice(plaintext);
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad), &mut body)
            .map_err(|_| StoreError::Seal(self.name.clone()))?;
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let fail = || StoreError::Unseal(self.name.clone());
        let (nonce, body) = sealed.split_at_checked(NONCE_LEN).ok_or_else(fail)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut buf = body.to_vec();
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| fail())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey,
    };

    #[tokio::test]
    async fn generated_keys_are_private_and_reload_to_the_same_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let km = FileKeyManager::open(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let k = km.generate("ca-1", KeyAlgorithm::EcdsaP256).await.unwrap();
        let file = dir.join("ca-1.p256.p8");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let km2 = FileKeyManager::open(&dir).unwrap();
        let k2 = km2.load("ca-1").await.unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        let sig = k2.sign(b"msg").unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k.public_key())
            .verify(b"msg", &sig)
            .unwrap();
        let der = k2.sign_der(b"msg").unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, k.public_key())
            .verify(b"msg", &der)
            .unwrap();
        assert!(
            format!("{k:?}").len() < 60,
            "debug output must not carry key material"
        );
    }

    #[tokio::test]
    async fn ed25519_keys_sign_and_list() {
        let tmp = tempfile::tempdir().unwrap();
        let km = FileKeyManager::open(&tmp.path().join("k")).unwrap();
        let k = km
            .generate("checkpoint-1", KeyAlgorithm::Ed25519)
            .await
            .unwrap();
        let sig = k.sign(b"note").unwrap();
        UnparsedPublicKey::new(&ED25519, k.public_key())
            .verify(b"note", &sig)
            .unwrap();
        km.generate("a", KeyAlgorithm::EcdsaP256).await.unwrap();
        assert_eq!(km.list().await.unwrap(), vec!["a", "checkpoint-1"]);
        km.delete("a").await.unwrap();
        assert!(matches!(
            km.load("a").await,
            Err(StoreError::KeyNotFound(_))
        ));
    }

    #[tokio::test]
    async fn duplicate_and_bad_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let km = FileKeyManager::open(&tmp.path().join("k")).unwrap();
        km.generate("x", KeyAlgorithm::EcdsaP256).await.unwrap();
        assert!(matches!(
            km.generate("x", KeyAlgorithm::Ed25519).await,
            Err(StoreError::KeyExists(_))
        ));
        for bad in ["", "../etc", "a/b", ".hidden", "sp ace"] {
            assert!(matches!(
                km.generate(bad, KeyAlgorithm::EcdsaP256).await,
                Err(StoreError::InvalidKeyName(_))
            ));
        }
    }

    #[tokio::test]
    async fn sealer_round_trips_and_rejects_altered_or_moved_ciphertexts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        let km = FileKeyManager::open(&dir).unwrap();
        let kek = km.sealer("kek-1").await.unwrap();
        assert_eq!(kek.name(), "kek-1");
        let file = dir.join("kek-1.aes256gcm.key");
        let meta = fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);

        let sealed = kek.seal(b"data key", b"path-a").unwrap();
        assert_eq!(sealed.len(), b"data key".len() + SEAL_OVERHEAD);
        assert!(!sealed.windows(8).any(|w| w == b"data key"));
        assert_eq!(kek.open(&sealed, b"path-a").unwrap(), b"data key");
        // Random nonces: the same plaintext never seals to the same bytes.
        assert_ne!(kek.seal(b"data key", b"path-a").unwrap(), sealed);

        let unseal = |r: Result<Vec<u8>, StoreError>| matches!(r, Err(StoreError::Unseal(n)) if n == "kek-1");
        assert!(unseal(kek.open(&sealed, b"path-b")), "moved to other aad");
        for i in [0, NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(unseal(kek.open(&bad, b"path-a")), "flipped byte {i}");
        }
        assert!(unseal(kek.open(&sealed[..NONCE_LEN + 3], b"path-a")));
        assert!(unseal(kek.open(&[], b"path-a")));

        // Another KEK cannot open it.
        let other = km.sealer("kek-2").await.unwrap();
        assert!(matches!(
            other.open(&sealed, b"path-a"),
            Err(StoreError::Unseal(_))
        ));
        assert!(
            format!("{kek:?}").len() < 60,
            "debug output must not carry key material"
        );

        // A restart reloads the same key from its file.
        let km2 = FileKeyManager::open(&dir).unwrap();
        let again = km2.sealer("kek-1").await.unwrap();
        assert_eq!(again.open(&sealed, b"path-a").unwrap(), b"data key");
    }

    #[tokio::test]
    async fn sealers_list_delete_and_refuse_bad_names_or_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        let km = FileKeyManager::open(&dir).unwrap();
        km.sealer("kek-1").await.unwrap();
        km.generate("ca-1", KeyAlgorithm::EcdsaP256).await.unwrap();
        assert_eq!(km.list().await.unwrap(), vec!["ca-1", "kek-1"]);
        for bad in ["", "../x", "a/b", ".kek"] {
            assert!(matches!(
                km.sealer(bad).await,
                Err(StoreError::InvalidKeyName(_))
            ));
        }
        km.delete("kek-1").await.unwrap();
        assert!(!dir.join("kek-1.aes256gcm.key").exists());
        assert_eq!(km.list().await.unwrap(), vec!["ca-1"]);
        // Deleting forgets the cached key too: asking again makes a new one.
        let fresh = km.sealer("kek-1").await.unwrap();
        assert!(dir.join("kek-1.aes256gcm.key").exists());
        let _ = fresh;

        // A truncated key file is refused, not padded or replaced.
        fs::write(dir.join("short.aes256gcm.key"), [1u8; 16]).unwrap();
        let km2 = FileKeyManager::open(&dir).unwrap();
        assert!(matches!(
            km2.sealer("short").await,
            Err(StoreError::InvalidKey(_))
        ));
        assert_eq!(
            fs::read(dir.join("short.aes256gcm.key")).unwrap(),
            [1u8; 16]
        );
    }

    #[tokio::test]
    async fn concurrent_first_use_yields_one_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        let managers: Vec<_> = (0..4)
            .map(|_| Arc::new(FileKeyManager::open(&dir).unwrap()))
            .collect();
        let tasks: Vec<_> = managers
            .iter()
            .map(|m| {
                let m = m.clone();
                tokio::spawn(async move { m.sealer("shared").await.unwrap() })
            })
            .collect();
        let mut sealers = Vec::new();
        for t in tasks {
            sealers.push(t.await.unwrap());
        }
        let sealed = sealers[0].seal(b"x", b"").unwrap();
        for s in &sealers {
            assert_eq!(s.open(&sealed, b"").unwrap(), b"x");
        }
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn loose_key_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            FileKeyManager::open(&dir),
            Err(StoreError::LoosePermissions { .. })
        ));
    }
}
