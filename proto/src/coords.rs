//! Typed module coordinates, validated with the Go toolchain's rules
//! (golang.org/x/mod/module): a [`ModulePath`] passes `CheckPath`, a
//! [`Version`] is a safe single path element that can never be read as a
//! command-line flag. Once built, they are trusted by every hop; receivers
//! still rebuild them from the wire with the same checks.

use crate::error::{Error, Result};
use std::fmt;

/// The longest module path accepted.
pub const MAX_PATH_LEN: usize = 1024;
/// The longest version or query accepted.
pub const MAX_VERSION_LEN: usize = 256;

/// A decoded, valid module path such as `github.com/Azure/azure-sdk-for-go`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModulePath(String);

/// A decoded version or version query such as `v1.2.3`, `master` or `latest`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(String);

/// A module path and version together.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Coordinates {
    /// The module path.
    pub module: ModulePath,
    /// The version (or query).
    pub version: Version,
}

impl ModulePath {
    /// Validates a decoded module path (Go's `module.CheckPath`).
    pub fn new(path: impl Into<String>) -> Result<Self> {
        let path = path.into();
        check_path(&path)?;
        Ok(ModulePath(path))
    }

    /// Decodes a case-escaped path (`github.com/!azure/x`) and validates it.
    pub fn from_escaped(escaped: &str) -> Result<Self> {
        let decoded = unescape(escaped)
            .ok_or_else(|| Error::invalid(format!("invalid escaped module path {escaped:?}")))?;
        Self::new(decoded)
    }

    /// The decoded path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-escaped form used in GOPROXY URLs.
    pub fn escaped(&self) -> String {
        escape(&self.0)
    }

    /// The path's elements, for building storage keys.
    pub fn elements(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl Version {
    /// Validates a decoded version or query: a non-empty single path element
    /// of letters, digits and `.-_+~`, not starting with `-` or `.`.
    pub fn new(version: impl Into<String>) -> Result<Self> {
        let version = version.into();
        check_version(&version)?;
        Ok(Version(version))
    }

    /// Decodes a case-escaped version (`v1.0.0-!r!c1`) and validates it.
    pub fn from_escaped(escaped: &str) -> Result<Self> {
        let decoded = unescape(escaped)
            .ok_or_else(|| Error::invalid(format!("invalid escaped version {escaped:?}")))?;
        Self::new(decoded)
    }

    /// The decoded version.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-escaped form used in GOPROXY URLs.
    pub fn escaped(&self) -> String {
        escape(&self.0)
    }

    /// Whether this is a canonical semantic version (`vX.Y.Z[-pre][+incompatible]`),
    /// as opposed to a query such as `master` or `v1`.
    pub fn is_canonical(&self) -> bool {
        is_canonical_version(&self.0)
    }
}

/// A [`Version`] known to be canonical (`vX.Y.Z[-pre][+incompatible]`),
/// never a query such as `master` or `v1`: what storage stores. The only
/// ways to make one check it, so a query cannot reach a save.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CanonicalVersion(Version);

impl CanonicalVersion {
    /// Validates a decoded version and checks that it is canonical;
    /// `Invalid` otherwise.
    pub fn new(version: impl Into<String>) -> Result<Self> {
        Self::try_from(Version::new(version)?)
    }

    /// The version.
    pub fn as_version(&self) -> &Version {
        &self.0
    }

    /// The decoded version string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl TryFrom<Version> for CanonicalVersion {
    type Error = Error;
    fn try_from(v: Version) -> Result<Self> {
        if v.is_canonical() {
            Ok(CanonicalVersion(v))
        } else {
            Err(Error::invalid(format!(
                "{:?} is not a canonical version",
                v.as_str()
            )))
        }
    }
}

impl From<CanonicalVersion> for Version {
    fn from(v: CanonicalVersion) -> Version {
        v.0
    }
}

impl fmt::Display for CanonicalVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for CanonicalVersion {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Coordinates {
    /// Validates both halves.
    pub fn new(module: &str, version: &str) -> Result<Self> {
        Ok(Coordinates {
            module: ModulePath::new(module)?,
            version: Version::new(version)?,
        })
    }

    /// From the wire message.
    pub fn from_pb(pb: &crate::pb::Coordinates) -> Result<Self> {
        Self::new(&pb.module, &pb.version)
    }

    /// To the wire message.
    pub fn to_pb(&self) -> crate::pb::Coordinates {
        crate::pb::Coordinates {
            module: self.module.0.clone(),
            version: self.version.0.clone(),
        }
    }

    /// The version as a [`CanonicalVersion`]; `Invalid` (naming the
    /// coordinates) for a query.
    pub fn canonical_version(&self) -> Result<CanonicalVersion> {
        CanonicalVersion::try_from(self.version.clone()).map_err(|_| {
            Error::invalid(format!(
                "{self}: {:?} is not a canonical version",
                self.version.as_str()
            ))
        })
    }

    /// `module@version`, the key single-flight locks use.
    pub fn key(&self) -> String {
        format!("{}@{}", self.module, self.version)
    }
}

impl fmt::Display for ModulePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Display for Coordinates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.module, self.version)
    }
}
impl AsRef<str> for ModulePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
/// Module paths order as their strings do, so maps keyed by them can be
/// ranged over by a string prefix.
impl std::borrow::Borrow<str> for ModulePath {
    fn borrow(&self) -> &str {
        &self.0
    }
}
impl AsRef<str> for Version {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Case-escapes a path or version: each uppercase ASCII letter becomes `!`
/// and its lowercase form.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`escape`]; `None` for non-ASCII, a literal uppercase letter,
/// `!` not followed by `a`-`z`, or a trailing `!`.
pub fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut bang = false;
    for b in s.bytes() {
        if !b.is_ascii() {
            return None;
        }
        if bang {
            bang = false;
            if !b.is_ascii_lowercase() {
                return None;
            }
            out.push(b.to_ascii_uppercase() as char);
            continue;
        }
        if b == b'!' {
            bang = true;
            continue;
        }
        if b.is_ascii_uppercase() {
            return None;
        }
        out.push(b as char);
    }
    if bang {
        return None;
    }
    Some(out)
}

fn bad_path(path: &str, why: &str) -> Error {
    Error::invalid(format!("malformed module path {path:?}: {why}"))
}

fn check_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(bad_path(path, "empty string"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(Error::invalid(format!(
            "module path longer than {MAX_PATH_LEN} bytes"
        )));
    }
    if path.starts_with('/') || path.ends_with('/') {
        return Err(bad_path(path, "leading or trailing slash"));
    }
    if path.contains("//") {
        return Err(bad_path(path, "double slash"));
    }
    for elem in path.split('/') {
        check_elem(elem, true).map_err(|why| bad_path(path, &why))?;
    }
    let first = path.split('/').next().unwrap_or_default();
    if !first.contains('.') {
        return Err(bad_path(path, "missing dot in first path element"));
    }
    if first.starts_with('-') {
        return Err(bad_path(path, "leading dash in first path element"));
    }
    if let Some(c) = first
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Err(bad_path(
            path,
            &format!("invalid char {c:?} in first path element"),
        ));
    }
    check_major_suffix(path).map_err(|why| bad_path(path, &why))
}

/// Checks one element of a module path (`module = true`) or a version.
fn check_elem(elem: &str, module: bool) -> std::result::Result<(), String> {
    if elem.is_empty() {
        return Err("empty path element".into());
    }
    if elem.bytes().all(|b| b == b'.') {
        return Err(format!("invalid path element {elem:?}"));
    }
    if elem.starts_with('.') {
        return Err(format!("leading dot in path element {elem:?}"));
    }
    if elem.ends_with('.') {
        return Err(format!("trailing dot in path element {elem:?}"));
    }
    if elem.starts_with('-') {
        return Err(format!("leading dash in path element {elem:?}"));
    }
    for c in elem.chars() {
        let ok = c.is_ascii_alphanumeric()
            || matches!(c, '-' | '.' | '_' | '~')
            || (!module && c == '+');
        if !ok {
            return Err(format!("invalid char {c:?}"));
        }
    }
    // Windows reserved names and short names, as the Go toolchain rejects them.
    let short = elem.split('.').next().unwrap_or(elem).to_ascii_lowercase();
    const RESERVED: &[&str] = &["con", "prn", "aux", "nul"];
    let numbered = (short.starts_with("com") || short.starts_with("lpt"))
        && short.len() == 4
        && short.as_bytes()[3].is_ascii_digit();
    if RESERVED.contains(&short.as_str()) || numbered {
        return Err(format!(
            "{elem:?} disallowed as path element component on Windows"
        ));
    }
    if let Some(t) = short.rfind('~') {
        let suffix = &short[t + 1..];
        if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "trailing tilde and digits in path element {elem:?}"
            ));
        }
    }
    Ok(())
}

/// The `/vN` major-version suffix rules of `module.SplitPathVersion`.
fn check_major_suffix(path: &str) -> std::result::Result<(), String> {
    if let Some(rest) = path.strip_prefix("gopkg.in/") {
        // gopkg.in/pkg.vN or gopkg.in/user/pkg.vN
        let last = rest.rsplit('/').next().unwrap_or(rest);
        let Some((_, major)) = last.rsplit_once(".v") else {
            return Err("gopkg.in path without .vN suffix".into());
        };
        let digits = major.strip_suffix("-unstable").unwrap_or(major);
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return Err("invalid gopkg.in major version".into());
        }
        return Ok(());
    }
    let last = path.rsplit('/').next().unwrap_or(path);
    let major = last
        .strip_prefix('v')
        .filter(|n| path.contains('/') && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if let Some(n) = major {
        if n.starts_with('0') || n == "1" {
            return Err(format!("invalid major version suffix /{last}"));
        }
    }
    Ok(())
}

fn check_version(v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(Error::invalid("empty version"));
    }
    if v.len() > MAX_VERSION_LEN {
        return Err(Error::invalid(format!(
            "version longer than {MAX_VERSION_LEN} bytes"
        )));
    }
    check_elem(v, false).map_err(|why| Error::invalid(format!("malformed version {v:?}: {why}")))
}

/// Whether `v` is a canonical semantic version as module versions use them:
/// `vMAJOR.MINOR.PATCH`, an optional pre-release, and no build metadata other
/// than `+incompatible`.
pub fn is_canonical_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let (rest, build) = match rest.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (rest, None),
    };
    if let Some(b) = build {
        if b != "incompatible" {
            return false;
        }
    }
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let nums: Vec<&str> = core.split('.').collect();
    if nums.len() != 3 || !nums.iter().all(|n| is_num(n)) {
        return false;
    }
    if let Some(p) = pre {
        if p.is_empty() {
            return false;
        }
        for id in p.split('.') {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return false;
            }
            if id.bytes().all(|b| b.is_ascii_digit()) && id.len() > 1 && id.starts_with('0') {
                return false;
            }
        }
    }
    true
}

fn is_num(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// Whether `v` is a pseudo-version (`vX.Y.Z-yyyymmddhhmmss-abcdefabcdef` and
/// its pre-release forms), by the Go toolchain's pattern.
pub fn is_pseudo_version(v: &str) -> bool {
    if !is_canonical_version(v) {
        return false;
    }
    let v = v.strip_suffix("+incompatible").unwrap_or(v);
    let Some((_, pre)) = v.split_once('-') else {
        return false;
    };
    // The last two dash-separated fields are the timestamp and the revision.
    let mut parts = pre.rsplitn(2, '-');
    let (Some(rev), Some(head)) = (parts.next(), parts.next()) else {
        return false;
    };
    if rev.is_empty() || !rev.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    // head is "yyyymmddhhmmss" or "<pre>.0.yyyymmddhhmmss" / "0.yyyymmddhhmmss"
    let stamp = head.rsplit('.').next().unwrap_or(head);
    stamp.len() == 14 && stamp.bytes().all(|b| b.is_ascii_digit())
}

/// Orders two canonical versions by semantic-version precedence; anything
/// that is not canonical sorts before everything that is, then bytewise.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (is_canonical_version(a), is_canonical_version(b)) {
        (false, false) => return a.cmp(b),
        (false, true) => return Ordering::Less,
        (true, false) => return Ordering::Greater,
        _ => {}
    }
    let strip = |v: &str| -> (Vec<u64>, Option<String>) {
        let v = &v[1..];
        let v = v.split('+').next().unwrap_or(v);
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p.to_string())),
            None => (v, None),
        };
        (
            core.split('.').map(|n| n.parse().unwrap_or(0)).collect(),
            pre,
        )
    };
    let (ca, pa) = strip(a);
    let (cb, pb) = strip(b);
    ca.cmp(&cb)
        .then_with(|| match (pa, pb) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => compare_prerelease(&x, &y),
        })
        .then_with(|| a.cmp(b))
}

fn compare_prerelease(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let mut ia = a.split('.');
    let mut ib = b.split('.');
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let nx = x.bytes().all(|c| c.is_ascii_digit());
                let ny = y.bytes().all(|c| c.is_ascii_digit());
                let o = match (nx, ny) {
                    (true, true) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trips() {
        assert_eq!(escape("github.com/Azure/Go"), "github.com/!azure/!go");
        assert_eq!(
            unescape("github.com/!azure/!go").unwrap(),
            "github.com/Azure/Go"
        );
        for bad in ["github.com/Azure", "a!", "a!1", "a!!b", "é.com/x", "a\0b"] {
            // NUL is ASCII and unescapes, but the path check then rejects it.
            if bad.contains('\0') {
                assert!(ModulePath::from_escaped(bad).is_err());
            } else {
                assert!(unescape(bad).is_none(), "{bad}");
            }
        }
    }

    #[test]
    fn module_paths_follow_go_rules() {
        for good in [
            "example.com/a",
            "github.com/Azure/azure-sdk-for-go",
            "example.com/a/v2",
            "gopkg.in/yaml.v3",
            "golang.org/x",
            "example.com",
        ] {
            assert!(ModulePath::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/x.com",
            "x.com/",
            "x.com//a",
            "x.com/../etc",
            "x.com/./a",
            "../x.com",
            "nodot/x",
            "-x.com/a",
            "x.com/-a",
            "X.com/a",
            "x.com/a b",
            "x.com/a;rm",
            "x.com/a/v1",
            "x.com/a/v0",
            "x.com/.hidden",
            "x.com/con",
            "x.com/a\\b",
            "x.com/a@v1",
        ] {
            assert!(ModulePath::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_are_safe_elements() {
        for good in [
            "v1.2.3",
            "master",
            "latest",
            "v2.0.0+incompatible",
            "abc123",
        ] {
            assert!(Version::new(good).is_ok(), "{good}");
        }
        for bad in [
            "", "-v1", "--help", "..", ".", "v1/../x", "v1;ls", "$(id)", "a b", "v1|x",
        ] {
            assert!(Version::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_and_pseudo() {
        assert!(is_canonical_version("v1.2.3"));
        assert!(is_canonical_version("v1.2.3-pre.1"));
        assert!(is_canonical_version("v2.0.0+incompatible"));
        assert!(!is_canonical_version("v1.2"));
        assert!(!is_canonical_version("v1.2.3+meta"));
        assert!(!is_canonical_version("master"));
        assert!(!is_canonical_version("v01.2.3"));
        assert_eq!(CanonicalVersion::new("v1.2.3").unwrap().as_str(), "v1.2.3");
        for q in ["master", "v1", "latest", "v1.2.3+meta"] {
            assert!(CanonicalVersion::new(q).is_err(), "{q}");
            assert!(Coordinates::new("example.com/a", q)
                .unwrap()
                .canonical_version()
                .is_err());
        }
        assert!(is_pseudo_version("v0.0.0-20191109021931-daa7c04131f5"));
        assert!(is_pseudo_version("v1.2.4-0.20191109021931-daa7c04131f5"));
        assert!(is_pseudo_version(
            "v1.2.4-pre.0.20191109021931-daa7c04131f5"
        ));
        assert!(!is_pseudo_version("v1.2.3"));
        assert!(!is_pseudo_version("v1.2.3-pre.1"));
    }

    #[test]
    fn version_order() {
        let mut v = vec!["v1.10.0", "v1.2.0", "v1.2.0-rc.1", "v1.2.0-alpha", "v0.9.0"];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            v,
            ["v0.9.0", "v1.2.0-alpha", "v1.2.0-rc.1", "v1.2.0", "v1.10.0"]
        );
    }
}
