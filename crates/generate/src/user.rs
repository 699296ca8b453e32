//! The user an image's containers run as, resolved the way containerd resolves an image
//! config's `User` (`name`, `uid`, `name:group`, `uid:gid`, …) in the image's own
//! `/etc/passwd` and `/etc/group`: from the layers, as the container will see them.

use anyhow::{bail, Context, Result};

/// A process's user and primary group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
}

/// The image's `/etc/passwd` and `/etc/group` as its layers leave them (upper layers win,
/// whiteouts and opaque directories honoured).
#[derive(Debug, Default)]
pub struct Accounts {
    passwd: Option<String>,
    group: Option<String>,
}

impl Accounts {
    pub fn of(layers: &[Vec<u8>]) -> Result<Accounts> {
        let mut a = Accounts::default();
        for blob in layers {
            let tar = contrast_erofs::decompress(blob).context("a layer")?;
            // What this layer set, which an opaque `/etc` of the same layer does not hide.
            let (mut passwd, mut group) = (None, None);
            let mut opaque = false;
            for entry in tar::Archive::new(tar.as_slice()).entries()? {
                let mut entry = entry?;
                let path = entry.path()?.to_string_lossy().into_owned();
                let path = path.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
                let slot = match path {
                    "etc/passwd" => &mut passwd,
                    "etc/group" => &mut group,
                    "etc/.wh.passwd" => {
                        passwd = Some(None);
                        continue;
                    }
                    "etc/.wh.group" => {
                        group = Some(None);
                        continue;
                    }
                    "etc/.wh..wh..opq" | ".wh.etc" => {
                        opaque = true;
                        continue;
                    }
                    "etc" if !entry.header().entry_type().is_dir() => {
                        opaque = true;
                        continue;
                    }
                    _ => continue,
                };
                if !entry.header().entry_type().is_file() {
                    bail!("/{path} in a layer is not a plain file (a link): the user cannot be resolved");
                }
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).with_context(|| format!("/{path} in a layer"))?;
                *slot = Some(Some(text));
            }
            if opaque {
                (a.passwd, a.group) = (None, None);
            }
            if let Some(p) = passwd {
                a.passwd = p;
            }
            if let Some(g) = group {
                a.group = g;
            }
        }
        Ok(a)
    }

    /// `(name, uid, gid)` of each `/etc/passwd` entry.
    fn users(&self) -> impl Iterator<Item = (&str, u32, u32)> {
        self.passwd.iter().flat_map(|p| p.lines()).filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((*f.first()?, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
        })
    }

    /// `(name, gid)` of each `/etc/group` entry.
    fn groups(&self) -> impl Iterator<Item = (&str, u32)> {
        self.group.iter().flat_map(|g| g.lines()).filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((*f.first()?, f.get(2)?.parse().ok()?))
        })
    }

    /// A user given by number: its primary group from `/etc/passwd`, 0 without an entry.
    pub fn uid(&self, uid: u32) -> ProcessUser {
        let gid = self.users().find(|u| u.1 == uid).map_or(0, |u| u.2);
        ProcessUser { uid, gid }
    }

    /// An image config's `User`: empty is root.
    pub fn resolve(&self, user: &str) -> Result<ProcessUser> {
        if user.is_empty() {
            return Ok(ProcessUser { uid: 0, gid: 0 });
        }
        let (name, group) = match user.split_once(':') {
            Some((n, g)) => (n, Some(g)),
            None => (user, None),
        };
        let mut resolved = match name.parse::<u32>() {
            Ok(uid) => self.uid(uid),
            Err(_) => {
                let (_, uid, gid) = self
                    .users()
                    .find(|u| u.0 == name)
                    .with_context(|| format!("user {name:?} is not in the image's /etc/passwd"))?;
                ProcessUser { uid, gid }
            }
        };
        if let Some(group) = group {
            resolved.gid = match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    self.groups()
                        .find(|g| g.0 == group)
                        .with_context(|| format!("group {group:?} is not in the image's /etc/group"))?
                        .1
                }
            };
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, content.as_bytes()).expect("entry");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn names_and_numbers_as_containerd_resolves_them() {
        let a = Accounts::of(&[layer(&[
            ("etc/passwd", "root:x:0:0::/root:/bin/sh\napp:x:1000:2000::/home/app:/bin/sh\n"),
            ("etc/group", "root:x:0:\napp:x:2000:\nweb:x:33:app\n"),
        ])])
        .expect("accounts");
        let user = |u: &str| a.resolve(u).map(|p| (p.uid, p.gid)).map_err(|e| e.to_string());
        assert_eq!(user(""), Ok((0, 0)));
        assert_eq!(user("app"), Ok((1000, 2000)));
        assert_eq!(user("1000"), Ok((1000, 2000)), "a number's primary group from /etc/passwd");
        assert_eq!(user("4242"), Ok((4242, 0)), "no entry: group 0");
        assert_eq!(user("app:web"), Ok((1000, 33)));
        assert_eq!(user("1000:7"), Ok((1000, 7)));
        assert!(user("nobody").is_err_and(|e| e.contains("not in the image's /etc/passwd")));
        assert!(user("app:wheel").is_err_and(|e| e.contains("not in the image's /etc/group")));
    }

    #[test]
    fn the_top_layers_files_count() {
        let base = layer(&[("etc/passwd", "app:x:1000:1000::/:/bin/sh\n"), ("etc/group", "app:x:1000:\n")]);
        let changed = layer(&[("./etc/passwd", "app:x:1001:1001::/:/bin/sh\n")]);
        let a = Accounts::of(&[base.clone(), changed]).expect("accounts");
        assert_eq!(a.resolve("app").expect("app"), ProcessUser { uid: 1001, gid: 1001 });
        let removed = layer(&[("etc/.wh.passwd", "")]);
        let a = Accounts::of(&[base.clone(), removed]).expect("accounts");
        assert!(a.resolve("app").is_err(), "a whiteout removes it");
        let opaque = layer(&[("etc/.wh..wh..opq", ""), ("etc/passwd", "app:x:7:7::/:/bin/sh\n")]);
        let a = Accounts::of(&[base, opaque]).expect("accounts");
        assert_eq!(a.resolve("app").expect("app"), ProcessUser { uid: 7, gid: 7 }, "the opaque layer's own");
        assert!(a.resolve("app:app").is_err(), "the lower /etc/group is hidden");
    }
}
