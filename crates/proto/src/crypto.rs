//! End-to-end cryptography, amortized rather than weakened.
//!
//! Every primitive comes from a maintained crate: Ed25519 and SHA-256 and ChaCha20-Poly1305
//! from `ring`, HPKE (RFC 9180) with the X-Wing post-quantum hybrid KEM (ML-KEM-768 + X25519)
//! from `hpke`. Nothing here is home-made; this module only fixes *how* they are combined (its
//! length past 600 lines is its unit tests, kept beside the primitives they pin down):
//!
//! - **One HPKE setup per channel, direction and key epoch** ([`SendSession`] /
//!   [`RecvSession`]). The HPKE context is used in export-only mode: each message gets its own
//!   32-byte ChaCha20-Poly1305 key from `Export("hotline/v1 message" ‖ lane ‖ seq)`, so messages
//!   can be opened in any order and a retransmission opens like the original.
//! - **Signatures over hash chains**: an envelope's hash covers its header (which names the
//!   previous hash in its lane) and its ciphertext, so one Ed25519 signature over a chain head
//!   proves every envelope before it.
//! - **Domain separation**: every signature and hash is over [`Domain`] ‖ payload.
//!
//! It will not read keys from files or the clock, nor draw randomness itself: keys come in as
//! bytes and the HPKE encapsulation takes the caller's RNG.
//!
//! Secrets stay out of logs and are wiped where the crates allow: no `Debug` here prints key
//! material, a sealing secret leaves this module only as [`SecretBytes`] (zeroed on drop), and
//! the X-Wing private key zeroes itself on drop (`x-wing`'s `DecapsulationKey`). ring's
//! `Ed25519KeyPair` offers no way to wipe it, so an [`IdentityKey`] is parsed once and shared
//! (cloning it shares one key pair) rather than copied.

use std::fmt;
use std::sync::Arc;

use hpke::{Deserializable, Kem as _, Serializable};
use rand_core::CryptoRng;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, Zeroizing};

/// The cipher suite id carried in every frame: X-Wing HPKE (HKDF-SHA256, export-only),
/// ChaCha20-Poly1305 per message, Ed25519 signatures, SHA-256 chains.
pub const SUITE_XWING_CHACHA20_ED25519: u8 = 1;

type HpkeKem = hpke::kem::XWing;
type HpkeKdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::ExportOnlyAead;

/// Length of an X-Wing sealing public key.
pub const SEALING_PUBLIC_KEY_LEN: usize = 1216;
/// Length of an X-Wing encapsulated key.
pub const ENCAPSULATED_KEY_LEN: usize = 1120;

/// What a signature or hash is *for*. Prefixed to every signed or hashed payload so that a
/// signature made for one purpose can never be replayed as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// The hash of one envelope.
    EnvelopeHash,
    /// A signed lane-chain head.
    ChainHead,
    /// A delivered or acknowledged receipt.
    Receipt,
    /// A sealing-key announcement.
    Announcement,
    /// A link test.
    LinkTest,
    /// An escalation notice.
    Escalation,
    /// A session id derived from an encapsulated key.
    Session,
    /// An audit-log record hash.
    AuditRecord,
    /// A signed audit-log head.
    AuditHead,
}

impl Domain {
    fn prefix(self) -> &'static [u8] {
        match self {
            Self::EnvelopeHash => b"hotline/v1 envelope-hash\0",
            Self::ChainHead => b"hotline/v1 chain-head\0",
            Self::Receipt => b"hotline/v1 receipt\0",
            Self::Announcement => b"hotline/v1 announcement\0",
            Self::LinkTest => b"hotline/v1 link-test\0",
            Self::Escalation => b"hotline/v1 escalation\0",
            Self::Session => b"hotline/v1 session-id\0",
            Self::AuditRecord => b"hotline/v1 audit-record\0",
            Self::AuditHead => b"hotline/v1 audit-head\0",
        }
    }
}

/// Why a cryptographic operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A key had the wrong length or encoding.
    #[error("malformed {what} key")]
    MalformedKey {
        /// Which kind of key.
        what: &'static str,
    },
    /// The signature did not verify.
    #[error("bad signature")]
    BadSignature,
    /// AEAD opening failed: wrong key, or tampered ciphertext or header.
    #[error("decryption failed")]
    DecryptFailed,
    /// HPKE encapsulation or decapsulation failed.
    #[error("hpke {0}")]
    Hpke(&'static str),
    /// A key written as hex is not exactly the expected number of hex digits.
    #[error("{what} key must be {digits} hex digits: {detail}")]
    BadHex {
        /// Which kind of key.
        what: &'static str,
        /// How many hex digits it must have.
        digits: usize,
        /// What is wrong (a bad character and its position, an odd or wrong length).
        detail: String,
    },
}

/// A SHA-256 digest.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 over `domain ‖ parts[0] ‖ parts[1] ‖ …`.
    pub fn of(domain: Domain, parts: &[&[u8]]) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(domain.prefix());
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Self(out)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}…)", &self.to_hex()[..12])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..6]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                <[u8; 64]>::try_from(v)
                    .map(Signature)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// An endpoint's long-term Ed25519 identity public key: the key in its certificate, pinned by
/// its partner.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdentityPublicKey(pub [u8; 32]);

impl IdentityPublicKey {
    /// Verifies `sig` over `domain ‖ payload`.
    pub fn verify(
        &self,
        domain: Domain,
        payload: &[u8],
        sig: &Signature,
    ) -> Result<(), CryptoError> {
        let mut msg = Vec::with_capacity(domain.prefix().len() + payload.len());
        msg.extend_from_slice(domain.prefix());
        msg.extend_from_slice(payload);
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(&msg, &sig.0)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Lower-case hex, as written into configs for pinning.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 hex digits (either case; surrounding whitespace ignored). A sign, a
    /// `0x` prefix or any other character is refused.
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|e| CryptoError::BadHex {
            what: "identity public",
            digits: 64,
            detail: e.to_string(),
        })?;
        Ok(Self(out))
    }
}

impl fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublicKey({}…)", &self.to_hex()[..12])
    }
}

impl fmt::Display for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An endpoint's Ed25519 identity key pair (the same key as its TLS certificate).
///
/// Cloning shares the one parsed key pair: ring's `Ed25519KeyPair` cannot be zeroized or
/// cloned, so the node parses its key once and hands clones to the engine and the store instead
/// of leaving several copies of the private key in memory.
#[derive(Clone)]
pub struct IdentityKey {
    pair: Arc<Ed25519KeyPair>,
    public: IdentityPublicKey,
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl IdentityKey {
    /// Loads a PKCS#8 v1 or v2 Ed25519 private key (as written by rcgen).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, CryptoError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| {
            CryptoError::MalformedKey {
                what: "Ed25519 PKCS#8 identity",
            }
        })?;
        Ok(Self::wrap(pair))
    }

    /// Derives a key pair from a 32-byte seed (tests and fixtures).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        // A 32-byte seed is always a valid Ed25519 private key.
        #[expect(clippy::expect_used, reason = "a 32-byte seed is always a valid key")]
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("32-byte seed");
        Self::wrap(pair)
    }

    fn wrap(pair: Ed25519KeyPair) -> Self {
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Self {
            pair: Arc::new(pair),
            public: IdentityPublicKey(public),
        }
    }

    /// The public half.
    pub fn public(&self) -> IdentityPublicKey {
        self.public
    }

    /// Signs `domain ‖ payload`.
    pub fn sign(&self, domain: Domain, payload: &[u8]) -> Signature {
        let mut msg = Vec::with_capacity(domain.prefix().len() + payload.len());
        msg.extend_from_slice(domain.prefix());
        msg.extend_from_slice(payload);
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(&msg).as_ref());
        Signature(out)
    }
}

/// An X-Wing sealing key pair for one epoch. Announced (public half) signed by the identity key.
///
/// The secret zeroes itself on drop (`x-wing`'s `DecapsulationKey` is `ZeroizeOnDrop`).
#[derive(Clone)]
pub struct SealingKey {
    secret: <HpkeKem as hpke::Kem>::PrivateKey,
    public: <HpkeKem as hpke::Kem>::PublicKey,
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

impl SealingKey {
    /// A fresh key pair from the caller's RNG.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let (secret, public) = HpkeKem::gen_keypair_with_rng(rng);
        Self { secret, public }
    }

    /// Restores a key pair from its 32-byte secret (as persisted).
    pub fn from_secret(bytes: &[u8]) -> Result<Self, CryptoError> {
        let secret = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(bytes).map_err(|_| {
            CryptoError::MalformedKey {
                what: "sealing secret",
            }
        })?;
        let public = HpkeKem::sk_to_pk(&secret);
        Ok(Self { secret, public })
    }

    /// The secret, for the caller's durable store.
    pub fn secret_bytes(&self) -> SecretBytes {
        let mut bytes = self.secret.to_bytes();
        let secret = SecretBytes::from(bytes.to_vec());
        bytes.zeroize();
        secret
    }

    /// The public key, for announcements.
    pub fn public_bytes(&self) -> Vec<u8> {
        self.public.to_bytes().to_vec()
    }
}

/// Secret key bytes (a sealing secret as persisted): zeroed when dropped, and never shown by
/// `Debug`, which prints only the length.
///
/// Serialized exactly like a `serde_bytes` `Vec<u8>` (a byte string), so records written before
/// this type existed read back unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
}

impl std::ops::Deref for SecretBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted {} bytes>)", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The same entry point `serde_bytes` uses for a `Vec<u8>`.
        serde_bytes::ByteBuf::deserialize(d).map(|b| Self::from(b.into_vec()))
    }
}

/// The sender's half of one HPKE context (channel, direction, epoch).
pub struct SendSession {
    ctx: hpke::aead::AeadCtxS<HpkeAead, HpkeKdf, HpkeKem>,
    id: SessionId,
}

impl fmt::Debug for SendSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendSession")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Names one HPKE context: a hash of its encapsulated key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", hex::encode(&self.0[..6]))
    }
}

impl SessionId {
    /// The id of the session established by `enc`.
    pub fn of_encapsulated(enc: &[u8]) -> Self {
        let d = Digest::of(Domain::Session, &[enc]);
        let mut out = [0u8; 16];
        out.copy_from_slice(&d.0[..16]);
        Self(out)
    }
}

impl SendSession {
    /// Runs one HPKE setup to `recipient_public` (an announced sealing key); returns the session
    /// and the encapsulated key the recipient needs.
    pub fn establish(
        rng: &mut impl CryptoRng,
        recipient_public: &[u8],
        info: &[u8],
    ) -> Result<(Self, Vec<u8>), CryptoError> {
        let pk = <HpkeKem as hpke::Kem>::PublicKey::from_bytes(recipient_public).map_err(|_| {
            CryptoError::MalformedKey {
                what: "sealing public",
            }
        })?;
        let (enc, ctx) = hpke::setup_sender_with_rng::<HpkeAead, HpkeKdf, HpkeKem>(
            &hpke::OpModeS::Base,
            &pk,
            info,
            rng,
        )
        .map_err(|_| CryptoError::Hpke("encapsulation failed"))?;
        let enc = enc.to_bytes().to_vec();
        let id = SessionId::of_encapsulated(&enc);
        Ok((Self { ctx, id }, enc))
    }

    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Seals one message under its own derived key; `aad` is the encoded header.
    pub fn seal(
        &self,
        lane: u8,
        seq: u64,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut key = [0u8; 32];
        self.ctx
            .export(&message_key_label(lane, seq), &mut key)
            .map_err(|_| CryptoError::Hpke("export failed"))?;
        aead_seal(&key, aad, plaintext)
    }
}

/// The recipient's half of one HPKE context.
pub struct RecvSession {
    ctx: hpke::aead::AeadCtxR<HpkeAead, HpkeKdf, HpkeKem>,
}

impl fmt::Debug for RecvSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecvSession(..)")
    }
}

impl RecvSession {
    /// Decapsulates `enc` with our sealing key.
    pub fn accept(key: &SealingKey, enc: &[u8], info: &[u8]) -> Result<Self, CryptoError> {
        let enc = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| {
            CryptoError::MalformedKey {
                what: "encapsulated",
            }
        })?;
        let ctx = hpke::setup_receiver::<HpkeAead, HpkeKdf, HpkeKem>(
            &hpke::OpModeR::Base,
            &key.secret,
            &enc,
            info,
        )
        .map_err(|_| CryptoError::Hpke("decapsulation failed"))?;
        Ok(Self { ctx })
    }

    /// Opens one message sealed by [`SendSession::seal`].
    pub fn open(
        &self,
        lane: u8,
        seq: u64,
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut key = [0u8; 32];
        self.ctx
            .export(&message_key_label(lane, seq), &mut key)
            .map_err(|_| CryptoError::Hpke("export failed"))?;
        aead_open(&key, aad, ciphertext)
    }
}

fn message_key_label(lane: u8, seq: u64) -> [u8; 28] {
    let mut label = [0u8; 28];
    label[..19].copy_from_slice(b"hotline/v1 message\0");
    label[19] = lane;
    label[20..].copy_from_slice(&seq.to_be_bytes());
    label
}

// Each key seals exactly one message (it is derived from lane and seq), so a fixed nonce is
// never reused under one key.
fn aead_seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    use ring::aead;
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
            .map_err(|_| CryptoError::MalformedKey { what: "message" })?,
    );
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key([0; 12]),
        aead::Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| CryptoError::Hpke("seal failed"))?;
    Ok(buf)
}

fn aead_open(key: &[u8; 32], aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    use ring::aead;
    let key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
            .map_err(|_| CryptoError::MalformedKey { what: "message" })?,
    );
    let mut buf = ciphertext.to_vec();
    let len = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key([0; 12]),
            aead::Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| CryptoError::DecryptFailed)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn signatures_are_domain_separated() {
        let k = IdentityKey::from_seed(&[7; 32]);
        let sig = k.sign(Domain::Receipt, b"x");
        assert!(k.public().verify(Domain::Receipt, b"x", &sig).is_ok());
        assert_eq!(
            k.public().verify(Domain::LinkTest, b"x", &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            k.public().verify(Domain::Receipt, b"y", &sig),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn identity_key_hex_roundtrips() {
        let k = IdentityKey::from_seed(&[1; 32]).public();
        assert_eq!(IdentityPublicKey::from_hex(&k.to_hex()), Ok(k));
        assert_eq!(
            IdentityPublicKey::from_hex(&format!(" {} ", k.to_hex().to_uppercase())),
            Ok(k)
        );
        assert!(IdentityPublicKey::from_hex("zz").is_err());
    }

    #[test]
    fn identity_key_hex_refuses_signs_and_odd_lengths() {
        let good = IdentityKey::from_seed(&[1; 32]).public().to_hex();
        // `u8::from_str_radix` accepts "+f"; a pinned key must not.
        let plus = format!("+{}", &good[1..]);
        let e = IdentityPublicKey::from_hex(&plus).unwrap_err().to_string();
        assert!(e.contains("64 hex digits") && e.contains("'+'"), "{e}");
        let e = IdentityPublicKey::from_hex(&good[1..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 hex digits") && e.contains("Odd"), "{e}");
        let e = IdentityPublicKey::from_hex(&good[2..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 hex digits"), "{e}");
        let e = IdentityPublicKey::from_hex(&format!("0x{}", &good[2..]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'x'"), "{e}");
    }

    #[test]
    fn debug_never_shows_secret_key_material() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let sealing = SealingKey::generate(&mut rng);
        let secret = sealing.secret_bytes();
        let secret_hex = hex::encode(&*secret);
        let shown = format!("{sealing:?} {secret:?} {secret:#?}");
        assert!(!shown.contains(&secret_hex), "{shown}");
        assert!(!shown.contains(&secret_hex[..16]), "{shown}");
        assert!(
            shown.contains("SecretBytes(<redacted 32 bytes>)"),
            "{shown}"
        );
        let record = crate::engine::Record::SealingKey {
            epoch: 1,
            secret: sealing.secret_bytes(),
            expires_at: crate::types::Time(0),
        };
        let shown = format!("{record:?}");
        assert!(!shown.contains(&secret_hex[..16]), "{shown}");

        let seed = [0x5a; 32];
        let identity = IdentityKey::from_seed(&seed);
        let shown = format!("{identity:?} {identity:#?}");
        assert!(!shown.contains(&hex::encode(seed)[..16]), "{shown}");
        assert!(!shown.contains("5a5a5a5a"), "{shown}");
    }

    #[test]
    fn secret_bytes_encode_like_serde_bytes() {
        #[derive(Serialize, Deserialize)]
        struct Before {
            #[serde(with = "serde_bytes")]
            secret: Vec<u8>,
        }
        #[derive(Serialize, Deserialize)]
        struct After {
            secret: SecretBytes,
        }
        let bytes: Vec<u8> = (0..32).collect();
        let before = postcard::to_allocvec(&Before {
            secret: bytes.clone(),
        })
        .unwrap();
        let after = postcard::to_allocvec(&After {
            secret: SecretBytes::from(bytes.clone()),
        })
        .unwrap();
        assert_eq!(before, after);
        let read: After = postcard::from_bytes(&before).unwrap();
        assert_eq!(&*read.secret, &bytes[..]);
    }

    #[test]
    fn sessions_open_out_of_order_and_reject_tampering() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let key = SealingKey::generate(&mut rng);
        assert_eq!(key.public_bytes().len(), SEALING_PUBLIC_KEY_LEN);
        let (tx, enc) = SendSession::establish(&mut rng, &key.public_bytes(), b"info").unwrap();
        assert_eq!(enc.len(), ENCAPSULATED_KEY_LEN);
        let rx = RecvSession::accept(&key, &enc, b"info").unwrap();
        let c1 = tx.seal(0, 1, b"h1", b"one").unwrap();
        let c2 = tx.seal(0, 2, b"h2", b"two").unwrap();
        assert_eq!(rx.open(0, 2, b"h2", &c2).unwrap(), b"two");
        assert_eq!(rx.open(0, 1, b"h1", &c1).unwrap(), b"one");
        assert_eq!(rx.open(0, 1, b"h2", &c1), Err(CryptoError::DecryptFailed));
        assert_eq!(rx.open(1, 1, b"h1", &c1), Err(CryptoError::DecryptFailed));
        let other = RecvSession::accept(&key, &enc, b"other info").unwrap();
        assert_eq!(
            other.open(0, 1, b"h1", &c1),
            Err(CryptoError::DecryptFailed)
        );
        let restored = SealingKey::from_secret(&key.secret_bytes()).unwrap();
        assert_eq!(restored.public_bytes(), key.public_bytes());
    }
}
