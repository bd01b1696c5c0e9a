//! Credentials from a netrc file (`NETRC`, else `~/.netrc`), as the go
//! command uses them for proxy hosts: `machine <host> login <l> password
//! <p>` entries, and a `default` entry. Never logged.

use std::path::Path;

/// The parsed entries of a netrc file.
#[derive(Default, Clone)]
pub(crate) struct Netrc {
    /// (machine, login, password); machine `None` for `default`.
    entries: Vec<(Option<String>, String, String)>,
}

impl Netrc {
    /// The entries of the file at `path`; none if it cannot be read.
    pub(crate) fn read(path: &Path) -> Netrc {
        std::fs::read_to_string(path)
            .map(|t| Netrc::parse(&t))
            .unwrap_or_default()
    }

    fn parse(text: &str) -> Netrc {
        let mut entries = Vec::new();
        let mut cur: Option<(Option<String>, String, String)> = None;
        let mut toks = text.split_whitespace();
        while let Some(t) = toks.next() {
            match t {
                "machine" | "default" => {
                    if let Some(e) = cur.take() {
                        entries.push(e);
                    }
                    let machine = if t == "machine" {
                        toks.next().map(str::to_string)
                    } else {
                        None
                    };
                    cur = Some((machine, String::new(), String::new()));
                }
                "login" => {
                    if let (Some(e), Some(v)) = (cur.as_mut(), toks.next()) {
                        e.1 = v.to_string();
                    }
                }
                "password" => {
                    if let (Some(e), Some(v)) = (cur.as_mut(), toks.next()) {
                        e.2 = v.to_string();
                    }
                }
                "account" | "macdef" => {
                    toks.next();
                }
                _ => {}
            }
        }
        if let Some(e) = cur.take() {
            entries.push(e);
        }
        Netrc { entries }
    }

    /// The login and password for the host of `url`.
    pub(crate) fn for_url(&self, url: &str) -> Option<(&str, &str)> {
        let authority = url.split_once("://")?.1.split('/').next()?;
        // The go command matches `host:port` as written; a name without a
        // port matches too.
        let with_port = authority.rsplit('@').next()?;
        let host = match with_port.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => with_port,
        };
        self.entries
            .iter()
            .find(|(m, _, _)| m.as_deref() == Some(with_port))
            .or_else(|| {
                self.entries
                    .iter()
                    .find(|(m, _, _)| m.as_deref() == Some(host))
            })
            .or_else(|| self.entries.iter().find(|(m, _, _)| m.is_none()))
            .map(|(_, l, p)| (l.as_str(), p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_by_host() {
        let n = Netrc::parse(
            "machine a.example login u password p\nmachine h:1 login v password w\ndefault login d password q\n",
        );
        assert_eq!(n.for_url("http://h:1/x"), Some(("v", "w")));
        assert_eq!(n.for_url("https://a.example:8443/x"), Some(("u", "p")));
        assert_eq!(n.for_url("https://b.example/x"), Some(("d", "q")));
        assert_eq!(Netrc::default().for_url("https://a.example"), None);
    }
}
