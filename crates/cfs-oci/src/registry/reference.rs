//! `docker://` references, normalised as the docker transport normalises them: a first
//! component without a dot, a colon, an uppercase letter or `localhost` is a Docker Hub
//! repository, Docker Hub's
//! single-component names live under `library/`, the tag defaults to `latest`, and a digest
//! wins over a tag.

use crate::digest::OciDigest;
use crate::error::OciError;

/// Docker Hub's name in references, auth files and `certs.d`.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// What a reference points at inside its repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A tag (`latest` when none is written).
    Tag(String),
    /// A manifest digest.
    Digest(OciDigest),
}

/// A parsed `docker://[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerReference {
    /// The registry as written (`docker.io` for Docker Hub), with its port if any: the key for
    /// credentials and certificate directories.
    pub registry: String,
    /// The repository path, e.g. `library/debian`.
    pub repository: String,
    /// The tag or digest.
    pub target: Target,
}

impl DockerReference {
    /// Parse `docker://…`.
    pub fn parse(text: &str) -> Result<DockerReference, OciError> {
        let bad = |reason: String| OciError::InvalidReference {
            reference: text.to_owned(),
            reason,
        };
        let rest = text
            .strip_prefix("docker://")
            .ok_or_else(|| bad("not a docker:// reference".into()))?;
        let (named, digest) = match rest.rsplit_once('@') {
            Some((named, digest)) => (
                named,
                Some(
                    digest
                        .parse::<OciDigest>()
                        .map_err(|e| bad(e.to_string()))?,
                ),
            ),
            None => (rest, None),
        };
        // A colon after the last slash starts the tag; one before it is the registry's port.
        let (name, tag) = match named.rfind(':') {
            Some(i) if !named[i..].contains('/') => (&named[..i], Some(&named[i + 1..])),
            _ => (named, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first, path)
            }
            _ => (DOCKER_HUB, name),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB
        } else {
            registry
        };
        check_registry(registry).map_err(|r| bad(r.into()))?;
        check_repository(path).map_err(|r| bad(r.into()))?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let target = match (digest, tag) {
            (Some(d), _) => Target::Digest(d),
            (None, Some(t)) => {
                check_tag(t).map_err(|r| bad(r.into()))?;
                Target::Tag(t.to_owned())
            }
            (None, None) => Target::Tag("latest".into()),
        };
        Ok(DockerReference {
            registry: registry.to_owned(),
            repository,
            target,
        })
    }

    /// The host (and port) that serves the registry API.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The tag or digest as it goes into a manifest URL.
    pub fn target_text(&self) -> String {
        match &self.target {
            Target::Tag(t) => t.clone(),
            Target::Digest(d) => d.to_string(),
        }
    }
}

impl std::fmt::Display for DockerReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Tag(t) => write!(f, "{}/{}:{t}", self.registry, self.repository),
            Target::Digest(d) => write!(f, "{}/{}@{d}", self.registry, self.repository),
        }
    }
}

fn check_registry(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("empty registry name");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
    if !host.chars().all(allowed) {
        return Err("the registry name has characters a host name cannot have");
    }
    Ok(())
}

/// Repository paths: slash-separated lowercase components of letters, digits and `.`, `_`,
/// `-` separators, each starting and ending with a letter or digit.
fn check_repository(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty repository name");
    }
    if path.len() > 255 {
        return Err("the repository name is longer than 255 characters");
    }
    for component in path.split('/') {
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        if component.is_empty() {
            return Err("the repository name has an empty component");
        }
        if !component.chars().all(|c| alnum(c) || "._-".contains(c)) {
            return Err(
                "repository names are lowercase letters, digits and '.', '_', '-' separators",
            );
        }
        let ends_ok = component.starts_with(alnum) && component.ends_with(alnum);
        if !ends_ok {
            return Err("each repository name component starts and ends with a letter or digit");
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), &'static str> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(word)
        && tag.chars().all(|c| word(c) || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err("a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(text: &str) -> DockerReference {
        DockerReference::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn references_normalise_like_the_docker_transport() {
        let r = parse("docker://127.0.0.1:5000/cfs/rich:1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "cfs/rich");
        assert_eq!(r.target, Target::Tag("1".into()));
        assert_eq!(r.api_host(), "127.0.0.1:5000");

        let r = parse("docker://debian");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.api_host()),
            ("docker.io", "library/debian", "registry-1.docker.io")
        );
        assert_eq!(r.target, Target::Tag("latest".into()));
        assert_eq!(
            parse("docker://fedora/toolbox:40").repository,
            "fedora/toolbox"
        );
        assert_eq!(
            parse("docker://index.docker.io/busybox").repository,
            "library/busybox"
        );
        assert_eq!(parse("docker://MyHost/x").registry, "MyHost");
        let r = parse("docker://localhost/x");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost", "x")
        );
        let r = parse(&format!("docker://quay.io/a/b:t@{D}"));
        assert_eq!(r.target, Target::Digest(D.parse().expect("digest")));
        assert_eq!(r.target_text(), D);
        assert_eq!(
            parse("docker://127.0.0.1:5000/cfs/rich").target,
            Target::Tag("latest".into())
        );
        assert_eq!(
            parse("docker://quay.io/a/b:v1.2").to_string(),
            "quay.io/a/b:v1.2"
        );
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "docker://",
            "docker://Debian",
            "docker://quay.io/",
            "docker://quay.io/a//b",
            "docker://quay.io/-a",
            "docker://quay.io/a:",
            "docker://quay.io/a:-x",
            "docker://quay.io/a@sha256:zz",
            "docker://quay.io/a b",
            "docker://qu ay.io/a",
            "oci:/x",
        ] {
            assert!(DockerReference::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
