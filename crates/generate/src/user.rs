//! The user an image's containers run as, resolved the way containerd resolves an image
//! config's `User` (`pkg/oci`'s `WithUser`: `name`, `uid`, `name:group`, `uid:gid`, `uid:`,
//! `:gid`, …) in the image's own `/etc/passwd` and `/etc/group`, as its layers leave them.
//! Where the layers do not say plainly (`/etc` or one of the files a link, which containerd
//! follows in the mounted rootfs), the generator refuses and asks for `--user`, instead of
//! guessing differently from containerd.

use anyhow::{bail, Context, Result};

/// A process's user and primary group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
}

/// An image config's `User` (empty is root), as containerd resolves it; `layers` are read
/// only when a name, or a number's primary group, must be looked up.
pub fn resolve(user: &str, layers: &[Vec<u8>]) -> Result<ProcessUser> {
    if user.is_empty() {
        return Ok(ProcessUser { uid: 0, gid: 0 });
    }
    let parts: Vec<&str> = user.split(':').collect();
    match parts[..] {
        [one] => match one.parse::<u32>() {
            Ok(uid) => by_uid(uid, layers),
            Err(_) => {
                let (uid, gid) = Accounts::of(layers)?.user_named(one)?;
                Ok(ProcessUser { uid, gid })
            }
        },
        // containerd: a part that is no number is a name; an empty one is neither (0).
        [u, g] => {
            let (uid, name) = u.parse::<u32>().map_or((0, u), |n| (n, ""));
            let (gid, group) = g.parse::<u32>().map_or((0, g), |n| (n, ""));
            if name.is_empty() && group.is_empty() {
                return Ok(ProcessUser { uid, gid });
            }
            let accounts = Accounts::of(layers)?;
            let uid = if name.is_empty() { uid } else { accounts.user_named(name)?.0 };
            let gid = if group.is_empty() { gid } else { accounts.group_named(group)? };
            Ok(ProcessUser { uid, gid })
        }
        _ => bail!("User {user:?} is neither USER nor USER:GROUP"),
    }
}

/// A user given by number (containerd's `WithUserID`, also the pod spec's `runAsUser`
/// without `runAsGroup`): its primary group from `/etc/passwd`, 0 without an entry.
pub fn by_uid(uid: u32, layers: &[Vec<u8>]) -> Result<ProcessUser> {
    let gid = Accounts::of(layers)?.users()?.find(|u| u.1 == uid).map_or(0, |u| u.2);
    Ok(ProcessUser { uid, gid })
}

/// The supplementary groups containerd gives a container from the image (`pkg/oci`'s
/// `WithAdditionalGIDs`): those whose `/etc/group` entry lists `name` as a member, other than a
/// group of that very name (the user's own). `name` is a user name, or a number, which
/// `/etc/passwd` turns into one (without an entry: no groups). Where the files are links
/// (which containerd follows in the rootfs) none are counted: a container containerd gives
/// them is then refused, never one given more.
pub fn image_groups(name: &str, layers: &[Vec<u8>]) -> Result<Vec<u32>> {
    let accounts = Accounts::of(layers)?;
    let (Ok(mut users), Ok(groups)) = (accounts.users(), accounts.members()) else {
        return Ok(Vec::new());
    };
    let name = match name.parse::<u32>() {
        Ok(uid) => match users.find(|u| u.1 == uid) {
            Some((name, _, _)) => name,
            None => return Ok(Vec::new()),
        },
        Err(_) => name.to_owned(),
    };
    let mut gids: Vec<u32> =
        groups.filter(|(group, _, members)| *group != name && members.contains(&name)).map(|g| g.1).collect();
    gids.sort_unstable();
    gids.dedup();
    Ok(gids)
}

/// Whom containerd's CRI looks supplementary groups up for: the pod spec's `runAsUser`, and
/// without one, containerd 1.6.22, 1.7.3 and later take the image's `User` up to its first `:`
/// (root when it has none), earlier ones root. Without `runAsUser` both are allowed: a policy
/// does not know which containerd the node runs.
pub fn group_lookups(run_as_user: Option<u32>, image_user: &str) -> Vec<String> {
    match run_as_user {
        Some(uid) => vec![uid.to_string()],
        None if image_user.is_empty() => vec!["0".to_owned()],
        None => vec!["0".to_owned(), image_user.split(':').next().unwrap_or_default().to_owned()],
    }
}

/// A number field of `/etc/passwd` or `/etc/group` as containerd reads it (Go's `Atoi`, then a
/// cast to `uint32`: `-1` is 4294967295; what is no number, 0).
fn id_field(v: Option<&String>) -> u32 {
    v.and_then(|v| v.parse::<i64>().ok()).map_or(0, |n| n as u32)
}

/// A file of `/etc` as the layers leave it.
#[derive(Debug, Clone)]
enum EtcFile {
    Text(String),
    /// A link (or `/etc` itself one): containerd would follow it in the rootfs.
    Unresolvable(String),
}

/// The image's `/etc/passwd` and `/etc/group` (upper layers win; whiteouts and opaque
/// directories honoured).
#[derive(Debug, Default)]
struct Accounts {
    passwd: Option<EtcFile>,
    group: Option<EtcFile>,
}

impl Accounts {
    fn of(layers: &[Vec<u8>]) -> Result<Accounts> {
        let mut a = Accounts::default();
        for blob in layers {
            let tar = contrast_erofs::decompress(blob).context("a layer")?;
            // This layer's own files (`Some(None)`: a whiteout), which an opaque `/etc` of
            // the same layer does not hide.
            let (mut passwd, mut group): (Option<Option<EtcFile>>, Option<Option<EtcFile>>) = (None, None);
            let mut hide_lower = false;
            for entry in tar::Archive::new(tar.as_slice()).entries()? {
                let mut entry = entry?;
                let path = entry.path()?.to_string_lossy().into_owned();
                let path = path.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/');
                let kind = entry.header().entry_type();
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
                        hide_lower = true;
                        continue;
                    }
                    "etc" if !kind.is_dir() => {
                        let why = EtcFile::Unresolvable("/etc is a link".into());
                        (passwd, group) = (Some(Some(why.clone())), Some(Some(why)));
                        continue;
                    }
                    _ => continue,
                };
                *slot = Some(Some(if kind.is_file() {
                    // Bytes, as containerd reads them: a name that is no UTF-8 matches nothing here.
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut entry, &mut bytes)
                        .with_context(|| format!("/{path} in a layer"))?;
                    EtcFile::Text(String::from_utf8_lossy(&bytes).into_owned())
                } else {
                    EtcFile::Unresolvable(format!("/{path} is a link"))
                }));
            }
            if hide_lower {
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

    /// The lines of a file, as containerd parses them (trimmed; empty and `#` lines skipped).
    fn lines(file: &Option<EtcFile>) -> Result<Vec<Vec<String>>> {
        match file {
            None => Ok(Vec::new()),
            Some(EtcFile::Unresolvable(why)) => {
                bail!("{why} in the image's layers; give the user with --user IMAGE=UID:GID")
            }
            Some(EtcFile::Text(text)) => Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| l.split(':').map(str::to_owned).collect())
                .collect()),
        }
    }

    /// `(name, uid, gid)` of each `/etc/passwd` entry (a field that is no number is 0).
    fn users(&self) -> Result<impl Iterator<Item = (String, u32, u32)>> {
        Ok(Self::lines(&self.passwd)?.into_iter().map(|f| (f[0].clone(), id_field(f.get(2)), id_field(f.get(3)))))
    }

    /// `(uid, gid)` of the `/etc/passwd` entry `name`.
    fn user_named(&self, name: &str) -> Result<(u32, u32)> {
        let (_, uid, gid) = self
            .users()?
            .find(|u| u.0 == name)
            .with_context(|| format!("user {name:?} is not in the image's /etc/passwd"))?;
        Ok((uid, gid))
    }

    /// The gid of the `/etc/group` entry `name`.
    fn group_named(&self, name: &str) -> Result<u32> {
        let (_, gid) = self
            .groups()?
            .find(|g| g.0 == name)
            .with_context(|| format!("group {name:?} is not in the image's /etc/group"))?;
        Ok(gid)
    }

    /// `(name, gid)` of each `/etc/group` entry.
    fn groups(&self) -> Result<impl Iterator<Item = (String, u32)>> {
        Ok(self.members()?.map(|(name, gid, _)| (name, gid)))
    }

    /// `(name, gid, members)` of each `/etc/group` entry (members: its fourth field split at
    /// commas, untrimmed, empty names kept, as containerd splits it).
    fn members(&self) -> Result<impl Iterator<Item = (String, u32, Vec<String>)>> {
        Ok(Self::lines(&self.group)?.into_iter().map(|f| {
            let members = match f.get(3) {
                Some(m) if !m.is_empty() => m.split(',').map(str::to_owned).collect(),
                _ => Vec::new(),
            };
            (f[0].clone(), id_field(f.get(2)), members)
        }))
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

    fn link_layer(path: &str, target: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, path, target).expect("link");
        b.into_inner().expect("tar")
    }

    #[test]
    fn every_form_as_containerd_resolves_it() {
        let layers = [layer(&[
            ("etc/passwd", "root:x:0:0::/root:/bin/sh\n# a comment\n  app:x:1000:2000::/home/app:/bin/sh  \n"),
            ("etc/group", "root:x:0:\napp:x:2000:\nweb:x:33:app\n"),
        ])];
        let user = |u: &str| resolve(u, &layers).map(|p| (p.uid, p.gid)).map_err(|e| format!("{e:#}"));
        assert_eq!(user(""), Ok((0, 0)));
        assert_eq!(user("app"), Ok((1000, 2000)));
        assert_eq!(user("1000"), Ok((1000, 2000)), "a number's primary group from /etc/passwd");
        assert_eq!(user("4242"), Ok((4242, 0)), "no entry: group 0");
        assert_eq!(user("app:web"), Ok((1000, 33)));
        assert_eq!(user("1000:7"), Ok((1000, 7)));
        assert_eq!(user("app:7"), Ok((1000, 7)));
        assert_eq!(user("1000:web"), Ok((1000, 33)));
        assert_eq!(user("app:"), Ok((1000, 0)), "an empty group is 0, not the primary group");
        assert_eq!(user("1000:"), Ok((1000, 0)));
        assert_eq!(user(":33"), Ok((0, 33)));
        assert_eq!(user(":web"), Ok((0, 33)));
        assert!(user("nobody").is_err_and(|e| e.contains("not in the image's /etc/passwd")));
        assert!(user("app:wheel").is_err_and(|e| e.contains("not in the image's /etc/group")));
        assert!(user("a:b:c").is_err());
        // Numbers alone need no file at all.
        assert_eq!(resolve("5:6", &[b"not a layer".to_vec()]).expect("no look-up"), ProcessUser { uid: 5, gid: 6 });
    }

    #[test]
    fn image_groups_are_the_memberships_of_the_looked_up_user() {
        let layers = [layer(&[
            ("etc/passwd", "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\nneg:x:-1:0::/:/bin/sh\n"),
            (
                "etc/group",
                "root:x:0:\napp:x:1000:app\nweb:x:33:app,www\nwheel:x:10:root\naudio:x:29: app \nweb2:x:33:app\n\
                 odd:x:-1:app\ncomma:x:7:a,,b\n",
            ),
        ])];
        let groups = |name: &str| image_groups(name, &layers).expect("groups");
        assert_eq!(
            groups("1000"),
            [33, u32::MAX],
            "its own group by name is not counted; a gid once; -1 as Go casts it"
        );
        assert_eq!(groups("app"), groups("1000"), "a name needs no /etc/passwd look-up");
        assert_eq!(groups("0"), [10]);
        assert_eq!(groups("4242"), [0u32; 0], "no passwd entry: none");
        assert_eq!(groups(""), [7], "an empty name is an empty member, as containerd splits the list");
        assert_eq!(image_groups("0", &[link_layer("etc", "usr/etc")]).expect("links"), [0u32; 0], "links: none");
        assert_eq!(group_lookups(Some(1000), "app"), ["1000"]);
        assert_eq!(group_lookups(None, "app:web"), ["0", "app"], "containerd before and since 1.6.22/1.7.3");
        assert_eq!(group_lookups(None, ""), ["0"]);
    }

    #[test]
    fn the_top_layers_files_count() {
        let base = layer(&[("etc/passwd", "app:x:1000:1000::/:/bin/sh\n"), ("etc/group", "app:x:1000:\n")]);
        let changed = layer(&[("./etc/passwd", "app:x:1001:1001::/:/bin/sh\n")]);
        let pinned = |layers: &[Vec<u8>], u: &str| resolve(u, layers).map_err(|e| format!("{e:#}"));
        assert_eq!(pinned(&[base.clone(), changed], "app"), Ok(ProcessUser { uid: 1001, gid: 1001 }));
        let removed = layer(&[("etc/.wh.passwd", "")]);
        assert!(pinned(&[base.clone(), removed.clone()], "app").is_err(), "a whiteout removes it");
        assert_eq!(pinned(&[base.clone(), removed], "1000"), Ok(ProcessUser { uid: 1000, gid: 0 }));
        let opaque = layer(&[("etc/.wh..wh..opq", ""), ("etc/passwd", "app:x:7:7::/:/bin/sh\n")]);
        assert_eq!(pinned(&[base.clone(), opaque.clone()], "app"), Ok(ProcessUser { uid: 7, gid: 7 }));
        assert!(pinned(&[base.clone(), opaque], "app:app").is_err(), "the lower /etc/group is hidden");
        // Links: containerd follows them in the rootfs; the generator says so and asks.
        for links in [link_layer("etc", "usr/etc"), link_layer("etc/passwd", "../usr/share/passwd")] {
            let err = pinned(&[base.clone(), links], "1000").expect_err("a link");
            assert!(err.contains("is a link") && err.contains("--user"), "{err}");
        }
    }
}
