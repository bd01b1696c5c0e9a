//! Verifying go.sum hashes against a checksum database: the `lookup`
//! answer's signed tree head is checked with the database's verifier key
//! (Ed25519 note signature), its record proved in the tree
//! ([`super::sumtree`]) and its record lines compared with the hashes
//! computed from what was downloaded.

use super::sumtree::Lookup;
use super::tlog::Tree;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The verifier key the go command has built in for its default database
/// (used when `GOSUMDB` names that database without a key).
const DEFAULT_KEY: &str = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8";

/// A database's verifier key: `<name>+<hash>+<base64(0x01 || key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    /// The database name.
    pub name: String,
    hash: u32,
    key: Vec<u8>,
}

impl Verifier {
    /// Parses a verifier key; `None` if malformed or not Ed25519.
    pub fn parse(vkey: &str) -> Option<Verifier> {
        let mut parts = vkey.splitn(3, '+');
        let name = parts.next()?.to_string();
        let hash = u32::from_str_radix(parts.next()?, 16).ok()?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(parts.next()?)
            .ok()?;
        if name.is_empty() || raw.len() != 33 || raw[0] != 1 {
            return None;
        }
        let mut h = Sha256::new();
        h.update(name.as_bytes());
        h.update(b"\n");
        h.update(&raw);
        let d = h.finalize();
        if u32::from_be_bytes([d[0], d[1], d[2], d[3]]) != hash {
            return None;
        }
        Some(Verifier {
            name,
            hash,
            key: raw[1..].to_vec(),
        })
    }

    /// The verifier for a `GOSUMDB` value: its key, or the go command's
    /// built-in key when it names only the default database.
    pub fn for_gosumdb(gosumdb: &str) -> Option<Verifier> {
        let first = gosumdb.split_whitespace().next()?;
        if first.contains('+') {
            return Verifier::parse(first);
        }
        let default = Verifier::parse(DEFAULT_KEY)?;
        (default.name == first).then_some(default)
    }

    /// Whether `note` (text, a blank line, signature lines) carries a valid
    /// signature by this key; returns the signed text.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, String> {
        let split = note
            .rfind("\n\n")
            .ok_or("the signed tree head has no signatures")?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                continue;
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                continue;
            };
            if name != self.name {
                continue;
            }
            let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(b64) else {
                continue;
            };
            if sig.len() != 68 || u32::from_be_bytes([sig[0], sig[1], sig[2], sig[3]]) != self.hash
            {
                continue;
            }
            let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.key);
            if key.verify(text.as_bytes(), &sig[4..]).is_ok() {
                return Ok(text);
            }
            return Err("the signed tree head's signature is invalid".into());
        }
        Err(format!(
            "the signed tree head is not signed by {}",
            self.name
        ))
    }
}

/// Parses a `lookup` answer (`<record id>\n<record lines>\n\n<signed
/// note>`) and checks its note's signature with `verifier`; the record's
/// place in the tree is [`super::sumtree::TreeState::verify`]'s job.
pub fn parse_lookup<'a>(body: &'a str, verifier: &Verifier) -> Result<Lookup<'a>, String> {
    let malformed = || "the lookup answer is malformed".to_string();
    let (id, rest) = body.split_once('\n').ok_or_else(malformed)?;
    let id: i64 = id
        .parse()
        .ok()
        .filter(|n| *n >= 0 && id.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(malformed)?;
    let end = rest.find("\n\n").ok_or_else(malformed)?;
    let (text, note) = (&rest[..end + 1], &rest[end + 2..]);
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(malformed());
    }
    let signed = verifier.open(note)?;
    let tree = Tree::parse(signed).ok_or("the signed tree head is malformed")?;
    Ok(Lookup {
        id,
        text,
        note,
        tree,
    })
}

/// The hashes the record `text` holds for `module version`: (zip hash,
/// go.mod hash).
pub fn record_hashes(text: &str, module: &str, version: &str) -> (Option<String>, Option<String>) {
    let mut zip = None;
    let mut go_mod = None;
    for line in text.lines() {
        let mut f = line.split(' ');
        let (Some(m), Some(v), Some(h), None) = (f.next(), f.next(), f.next(), f.next()) else {
            continue;
        };
        if m != module {
            continue;
        }
        if v == version {
            zip = Some(h.to_string());
        } else if v.strip_suffix("/go.mod") == Some(version) {
            go_mod = Some(h.to_string());
        }
    }
    (zip, go_mod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_check_their_hash() {
        let v = Verifier::parse(DEFAULT_KEY).unwrap();
        assert_eq!(v.name, "sum.golang.org");
        assert_eq!(Verifier::for_gosumdb("sum.golang.org"), Some(v));
        assert!(Verifier::parse(
            "sum.golang.org+033de0af+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
        )
        .is_none());
        assert!(Verifier::for_gosumdb("other.example").is_none());
    }

    #[test]
    fn malformed_lookups_are_refused_before_any_proof() {
        let v = Verifier::parse(DEFAULT_KEY).unwrap();
        let note = "go.sum database tree\n2\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n\u{2014} sum.golang.org Az3grg==\n";
        for body in [
            "",
            "x\nm v1 h1:a=\n\n",
            "-1\nm v1 h1:a=\n\n",
            "1\nm v1\th1:a=\n\n",
        ] {
            let e = parse_lookup(&format!("{body}{note}"), &v).unwrap_err();
            assert!(e.contains("malformed"), "{body:?}: {e}");
        }
        // Well formed, but not signed by the key.
        let e = parse_lookup(&format!("1\nm v1 h1:a=\n\n{note}"), &v).unwrap_err();
        assert!(e.contains("signature") || e.contains("not signed"), "{e}");
        assert_eq!(
            record_hashes("m v1 h1:z=\nm v1/go.mod h1:g=\no v1 h1:o=\n", "m", "v1"),
            (Some("h1:z=".into()), Some("h1:g=".into()))
        );
    }
}
