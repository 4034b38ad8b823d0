//! The containers configuration a direct fetch must honour, read the way skopeo (containers/
//! image) reads it: credentials from the auth files, and everything that would make skopeo
//! fetch differently from a plain anonymous or password-authenticated HTTPS client. Anything
//! of the second kind (mirrors and other `registries.conf` rewrites, credential helpers,
//! identity tokens, per-registry certificates, HTTP proxies, a signature policy that asks for
//! more than `insecureAcceptAnything`) is reported as a reason to leave the image to skopeo, so
//! the direct client never fetches something skopeo would fetch another way, or would refuse.
//! Where skopeo's own lookup rules are unclear, more places are read than skopeo reads: an
//! extra file can only send an image to skopeo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::reference::{DockerReference, DOCKER_HUB};

/// Largest configuration or auth file we read.
const CONFIG_LIMIT: u64 = 1 << 20;

/// Credentials for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password or token.
    pub password: String,
}

impl std::str::FromStr for Credentials {
    type Err = String;

    /// `USER:PASSWORD`, as `--creds` takes them.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Credentials {
                user: user.to_owned(),
                password: password.to_owned(),
            }),
            _ => Err("credentials are written USER:PASSWORD".into()),
        }
    }
}

impl Credentials {
    /// An auth file (containers' `auth.json`) holding these credentials for `registry`.
    pub fn auth_file_for(&self, registry: &str) -> String {
        let pair = format!("{}:{}", self.user, self.password);
        let auth = base64::engine::general_purpose::STANDARD.encode(pair);
        serde_json::json!({ "auths": { registry: { "auth": auth } } }).to_string()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Where the configuration lives: the process environment, as a value so tests can set it.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
    /// Root of the system configuration (`/` outside tests).
    root: PathBuf,
    uid: u32,
}

impl Environment {
    /// This process's environment and the real `/etc`.
    pub fn current() -> Environment {
        Environment {
            vars: std::env::vars().collect(),
            root: PathBuf::from("/"),
            uid: rustix::process::geteuid().as_raw(),
        }
    }

    /// An environment with `vars`, the system configuration under `root`.
    #[cfg(test)]
    pub fn fake(vars: &[(&str, &str)], root: &Path, uid: u32) -> Environment {
        Environment {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            root: root.to_owned(),
            uid,
        }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn system(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn home(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }

    fn config_home(&self) -> Option<PathBuf> {
        self.var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| self.home().map(|h| h.join(".config")))
    }

    /// Every per-user configuration directory that may be read: `$XDG_CONFIG_HOME` and
    /// `$HOME/.config` (containers/image uses one or the other depending on the file).
    fn config_homes(&self) -> Vec<PathBuf> {
        let mut homes: Vec<PathBuf> = self
            .var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        if let Some(home) = self.home() {
            let dot_config = home.join(".config");
            if !homes.contains(&dot_config) {
                homes.push(dot_config);
            }
        }
        homes
    }
}

/// Read a small text file; `Ok(None)` when it does not exist.
fn read_small(path: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(CONFIG_LIMIT + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > CONFIG_LIMIT {
        return Err(format!("{} is too large", path.display()));
    }
    Ok(Some(text))
}

/// Why skopeo must fetch images from `reference`'s registry, if it must.
pub fn needs_skopeo(env: &Environment, reference: &DockerReference) -> Option<String> {
    proxy_configured(env)
        .or_else(|| registries_configured(env))
        .or_else(|| certificates_configured(env, reference))
        .or_else(|| policy_restricts(env, reference))
}

fn proxy_configured(env: &Environment) -> Option<String> {
    [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .find(|v| env.var(v).is_some())
    .map(|v| format!("{v} is set"))
}

/// `registries.conf` and its drop-ins: `[[registry]]` entries (mirrors, rewrites, blocks,
/// insecure registries), the old `[registries.*]` tables and credential helpers change how
/// skopeo fetches; aliases and search lists only concern short names, which `docker://` never
/// uses.
fn registries_configured(env: &Environment) -> Option<String> {
    let mut files = Vec::new();
    if let Some(file) = env.var("CONTAINERS_REGISTRIES_CONF") {
        files.push(PathBuf::from(file));
    }
    files.push(env.system("/etc/containers/registries.conf"));
    let mut dirs = vec![env.system("/etc/containers/registries.conf.d")];
    for config in env.config_homes() {
        files.push(config.join("containers/registries.conf"));
        dirs.push(config.join("containers/registries.conf.d"));
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut drop_ins: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        drop_ins.sort();
        files.extend(drop_ins);
    }
    files.iter().find_map(|file| {
        let text = match read_small(file) {
            Ok(Some(text)) => text,
            Ok(None) => return None,
            Err(why) => return Some(why),
        };
        let table = match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => return Some(format!("cannot parse {}: {e}", file.display())),
        };
        if table.contains_key("registry") || table.contains_key("registries") {
            return Some(format!("{} configures registries", file.display()));
        }
        let default_helpers = toml::Value::Array(vec!["containers-auth.json".into()]);
        match table.get("credential-helpers") {
            Some(helpers) if *helpers != default_helpers => {
                Some(format!("{} configures credential helpers", file.display()))
            }
            _ => None,
        }
    })
}

/// Per-registry CA certificates and client keys live in `certs.d/HOST[:PORT]`.
fn certificates_configured(env: &Environment, reference: &DockerReference) -> Option<String> {
    let mut dirs = vec![
        env.system("/etc/containers/certs.d"),
        env.system("/etc/docker/certs.d"),
    ];
    dirs.extend(
        env.config_homes()
            .into_iter()
            .map(|c| c.join("containers/certs.d")),
    );
    let hosts = [reference.registry.as_str(), reference.api_host()];
    dirs.iter()
        .flat_map(|d| hosts.iter().map(move |h| d.join(h)))
        .find(|d| d.is_dir())
        .map(|d| format!("{} holds certificates for the registry", d.display()))
}

/// The signature policy skopeo applies: `$HOME/.config/containers/policy.json`, else
/// `/etc/containers/policy.json`. Every one of those that exists (and `$XDG_CONFIG_HOME`'s, to
/// be safe) must let `reference` in with `insecureAcceptAnything` alone; signatures, refusals
/// and anything this check does not understand are skopeo's to handle.
fn policy_restricts(env: &Environment, reference: &DockerReference) -> Option<String> {
    let mut candidates: Vec<PathBuf> = env
        .config_homes()
        .into_iter()
        .map(|c| c.join("containers/policy.json"))
        .collect();
    candidates.push(env.system("/etc/containers/policy.json"));
    let mut any = false;
    for file in candidates {
        let text = match read_small(&file) {
            Ok(Some(text)) => text,
            Ok(None) => continue,
            Err(why) => return Some(why),
        };
        any = true;
        if let Err(why) = policy_accepts(&text, reference) {
            return Some(format!("{}: {why}", file.display()));
        }
    }
    (!any).then(|| "there is no containers policy.json".into())
}

/// Whether a policy's requirements for `reference` are exactly `insecureAcceptAnything`;
/// `Err(why)` otherwise, also for anything malformed (skopeo refuses a malformed policy).
fn policy_accepts(text: &str, reference: &DockerReference) -> Result<(), String> {
    use serde_json::Value;
    let policy: Value = serde_json::from_str(text).map_err(|e| format!("cannot parse it: {e}"))?;
    let top = policy.as_object().ok_or("not a JSON object")?;
    if let Some(key) = top.keys().find(|k| *k != "default" && *k != "transports") {
        return Err(format!("unknown key {key:?}"));
    }
    let scopes = match top.get("transports") {
        None => None,
        Some(transports) => {
            let transports = transports
                .as_object()
                .ok_or("\"transports\" is not an object")?;
            if transports.values().any(|t| !t.is_object()) {
                return Err("a transport's scopes are not an object".into());
            }
            transports.get("docker").and_then(Value::as_object)
        }
    };
    // containers/image's order: the reference with its tag or digest, the repository, each
    // parent namespace, the host, wildcards for the host's parent domains, the transport's
    // default scope, the global default.
    let mut names = vec![reference.to_string()];
    let mut path = format!("{}/{}", reference.registry, reference.repository);
    loop {
        names.push(path.clone());
        match path.rfind('/') {
            Some(i) => path.truncate(i),
            None => break,
        }
    }
    let host = reference
        .registry
        .split(':')
        .next()
        .unwrap_or(&reference.registry);
    let mut domain = host;
    while let Some((_, parent)) = domain.split_once('.') {
        names.push(format!("*.{parent}"));
        domain = parent;
    }
    let requirements = names
        .iter()
        .find_map(|n| scopes.and_then(|s| s.get(n.as_str())))
        .or_else(|| scopes.and_then(|s| s.get("")))
        .or_else(|| top.get("default"))
        .ok_or("no requirements apply (no \"default\")")?;
    let list = requirements
        .as_array()
        .ok_or("requirements are not a list")?;
    let plain_accept = |r: &Value| {
        r.as_object().is_some_and(|o| {
            o.len() == 1 && o.get("type").and_then(Value::as_str) == Some("insecureAcceptAnything")
        })
    };
    if !list.is_empty() && list.iter().all(plain_accept) {
        Ok(())
    } else {
        Err("it asks for more than insecureAcceptAnything for this image".into())
    }
}

/// The auth files skopeo reads, in its order (containers/image's `getAuthFilePaths`): an
/// explicit file (`--authfile`, else `REGISTRY_AUTH_FILE`) alone; otherwise the runtime
/// directory's `auth.json`, the configuration directory's, then Docker's files.
fn auth_files(env: &Environment, authfile: Option<&Path>) -> Vec<PathBuf> {
    if let Some(file) = authfile {
        return vec![file.to_owned()];
    }
    if let Some(file) = env.var("REGISTRY_AUTH_FILE") {
        return vec![PathBuf::from(file)];
    }
    let mut files = Vec::new();
    match env.var("XDG_RUNTIME_DIR") {
        Some(dir) => files.push(Path::new(dir).join("containers/auth.json")),
        None => files.push(env.system(&format!("/run/containers/{}/auth.json", env.uid))),
    }
    if let Some(config) = env.config_home() {
        files.push(config.join("containers/auth.json"));
    }
    match (env.var("DOCKER_CONFIG"), env.home()) {
        (Some(dir), _) => files.push(Path::new(dir).join("config.json")),
        (None, Some(home)) => files.push(home.join(".docker/config.json")),
        (None, None) => {}
    }
    if let Some(home) = env.home() {
        files.push(home.join(".dockercfg"));
    }
    files
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// An auth file key as a registry or `registry/namespace` (old docker files write URLs).
fn normalise_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .map(|rest| rest.split('/').next().unwrap_or(rest))
        .unwrap_or(key);
    match key {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        _ => key
            .strip_prefix("index.docker.io/")
            .map_or_else(|| key.to_owned(), |rest| format!("{DOCKER_HUB}/{rest}")),
    }
}

/// The keys that may hold credentials for `reference`, most specific first.
fn candidate_keys(reference: &DockerReference) -> Vec<String> {
    let mut keys = Vec::new();
    let mut path = format!("{}/{}", reference.registry, reference.repository);
    loop {
        keys.push(path.clone());
        match path.rfind('/') {
            Some(i) => path.truncate(i),
            None => break,
        }
    }
    keys
}

/// Credentials for `reference` from the auth files (`authfile` first when given): `Ok(None)`
/// for anonymous access, `Err(why)` when only skopeo can get them (a credential helper, an
/// identity token) or a file cannot be used.
pub fn credentials(
    env: &Environment,
    reference: &DockerReference,
    authfile: Option<&Path>,
) -> Result<Option<Credentials>, String> {
    let keys = candidate_keys(reference);
    for file in auth_files(env, authfile) {
        // Missing files are skipped, as skopeo skips them.
        let Some(text) = read_small(&file)? else {
            continue;
        };
        let parsed: AuthFile = if file.ends_with(".dockercfg") {
            serde_json::from_str(&text).map(|auths| AuthFile {
                auths,
                ..AuthFile::default()
            })
        } else {
            serde_json::from_str(&text)
        }
        .map_err(|e| format!("cannot parse {}: {e}", file.display()))?;
        if parsed.creds_store.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(format!(
                "{} names a credential store (credsStore)",
                file.display()
            ));
        }
        let helper = parsed
            .cred_helpers
            .keys()
            .any(|k| keys.contains(&normalise_key(k)));
        if helper {
            return Err(format!(
                "{} names a credential helper for the registry",
                file.display()
            ));
        }
        let entries: BTreeMap<String, &AuthEntry> = parsed
            .auths
            .iter()
            .map(|(k, v)| (normalise_key(k), v))
            .collect();
        let Some(entry) = keys.iter().find_map(|k| entries.get(k)) else {
            continue;
        };
        if entry
            .identitytoken
            .as_deref()
            .is_some_and(|t| !t.is_empty())
        {
            return Err(format!(
                "{} holds an identity token for the registry",
                file.display()
            ));
        }
        let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) else {
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Err(format!(
                "{}: the credentials for {} are not base64 of user:password",
                file.display(),
                reference.registry
            ));
        };
        return Ok(Some(Credentials {
            user: user.to_owned(),
            // containers/image drops NULs around the password.
            password: password.trim_matches('\0').to_owned(),
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &str) -> DockerReference {
        DockerReference::parse(text).expect("reference")
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    const ACCEPT_ANYTHING: &str = r#"{"default":[{"type":"insecureAcceptAnything"}],
        "transports":{"docker-daemon":{"":[{"type":"insecureAcceptAnything"}]}}}"#;

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    #[test]
    fn given_credentials_parse_and_make_an_auth_file() {
        let c: Credentials = "me:se:cret".parse().expect("creds");
        assert_eq!((c.user.as_str(), c.password.as_str()), ("me", "se:cret"));
        assert!(!format!("{c:?}").contains("se:cret"));
        assert!("nocolon".parse::<Credentials>().is_err());
        assert!(":pw".parse::<Credentials>().is_err());
        let root = tempfile::tempdir().expect("tempdir");
        let file = root.path().join("auth.json");
        write(&file, &c.auth_file_for("127.0.0.1:5000"));
        let env = Environment::fake(&[], root.path(), 1000);
        let r = reference("docker://127.0.0.1:5000/a:1");
        assert_eq!(credentials(&env, &r, Some(&file)), Ok(Some(c)));
    }

    #[test]
    fn plain_configuration_allows_direct_fetches() {
        let root = tempfile::tempdir().expect("tempdir");
        let home = root.path().join("home");
        let env = Environment::fake(&[("HOME", home.to_str().expect("utf-8"))], root.path(), 0);
        let r = reference("docker://quay.io/a/b:1");
        // Without a policy, skopeo refuses to pull; with Debian's default one it accepts.
        assert!(needs_skopeo(&env, &r)
            .expect("no policy")
            .contains("policy.json"));
        write(
            &root.path().join("etc/containers/policy.json"),
            ACCEPT_ANYTHING,
        );
        assert_eq!(needs_skopeo(&env, &r), None);
        // Short-name aliases and search lists do not concern docker:// references.
        write(
            &root
                .path()
                .join("etc/containers/registries.conf.d/shortnames.conf"),
            "[aliases]\n\"debian\" = \"docker.io/library/debian\"\n",
        );
        write(
            &root.path().join("etc/containers/registries.conf"),
            "unqualified-search-registries = [\"docker.io\"]\n\
             credential-helpers = [\"containers-auth.json\"]\n",
        );
        assert_eq!(needs_skopeo(&env, &r), None);
        assert_eq!(credentials(&env, &r, None), Ok(None));
    }

    #[test]
    fn what_changes_skopeo_s_fetching_is_left_to_skopeo() {
        let r = reference("docker://quay.io/a/b:1");
        let root = tempfile::tempdir().expect("tempdir");
        let home = root.path().join("home");
        let home_str = home.to_str().expect("utf-8");
        let env = Environment::fake(&[("HOME", home_str)], root.path(), 1000);
        let policy = root.path().join("etc/containers/policy.json");
        write(&policy, ACCEPT_ANYTHING);
        assert_eq!(needs_skopeo(&env, &r), None);

        let proxied = Environment::fake(
            &[("HOME", home_str), ("https_proxy", "http://proxy:3128")],
            root.path(),
            1000,
        );
        assert!(needs_skopeo(&proxied, &r)
            .expect("proxy")
            .contains("https_proxy"));

        let mirrors = home.join(".config/containers/registries.conf.d/mirror.conf");
        write(
            &mirrors,
            "[[registry]]\nlocation = \"quay.io\"\n[[registry.mirror]]\nlocation = \"m.example\"\n",
        );
        assert!(needs_skopeo(&env, &r)
            .expect("mirror")
            .contains("configures registries"));
        std::fs::remove_file(&mirrors).expect("rm");
        write(&mirrors, "this is = not [toml");
        assert!(needs_skopeo(&env, &r)
            .expect("garbage")
            .contains("cannot parse"));
        std::fs::remove_file(&mirrors).expect("rm");
        write(
            &root.path().join("etc/containers/registries.conf"),
            "credential-helpers = [\"secretservice\"]\n",
        );
        assert!(needs_skopeo(&env, &r)
            .expect("helpers")
            .contains("credential helpers"));
        std::fs::remove_file(root.path().join("etc/containers/registries.conf")).expect("rm");
        assert_eq!(needs_skopeo(&env, &r), None);

        // Signatures or refusals for the scope that applies to quay.io/a/b:1, and anything
        // malformed, go to skopeo.
        let signed = r#"[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k"}]"#;
        for text in [
            r#"{"default":[{"type":"reject"}]}"#.to_owned(),
            format!(
                r#"{{"default":[{{"type":"insecureAcceptAnything"}}],"transports":{{"docker":{{"quay.io/a":{signed}}}}}}}"#
            ),
            format!(
                r#"{{"default":[{{"type":"insecureAcceptAnything"}}],"transports":{{"docker":{{"quay.io/a/b:1":{signed}}}}}}}"#
            ),
            format!(
                r#"{{"default":[{{"type":"insecureAcceptAnything"}}],"transports":{{"docker":{{"*.io":{signed}}}}}}}"#
            ),
            r#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{"":[]}}}"#
                .to_owned(),
            r#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":[]}}"#
                .to_owned(),
            r#"{"default":[{"type":"insecureAcceptAnything","x":1}]}"#.to_owned(),
            r#"{"default":[{"type":"insecureAcceptAnything"}],"extra":true}"#.to_owned(),
            r#"{"transports":{}}"#.to_owned(),
            "{".to_owned(),
        ] {
            write(&policy, &text);
            assert!(needs_skopeo(&env, &r).is_some(), "{text}");
        }
        // Another registry's signature requirement (as on Fedora and RHEL) does not concern this
        // image; a more specific scope that accepts wins over a stricter default.
        for text in [
            format!(r#"{{"default":[{{"type":"insecureAcceptAnything"}}],"transports":{{"docker":{{"registry.redhat.io":{signed},"quay.io/a/b/c":{signed}}}}}}}"#),
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{"quay.io":[{"type":"insecureAcceptAnything"}]}}}"#.to_owned(),
        ] {
            write(&policy, &text);
            assert_eq!(needs_skopeo(&env, &r), None, "{text}");
        }
        write(
            &policy,
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{"":[{"type":"insecureAcceptAnything"}]}}}"#,
        );
        assert_eq!(needs_skopeo(&env, &r), None);
        let user_policy = home.join(".config/containers/policy.json");
        write(&user_policy, r#"{"default":[{"type":"reject"}]}"#);
        assert!(needs_skopeo(&env, &r)
            .expect("user policy")
            .contains(".config"));
        std::fs::remove_file(&user_policy).expect("rm");

        let certs = root.path().join("etc/containers/certs.d/quay.io");
        std::fs::create_dir_all(&certs).expect("mkdir");
        assert!(needs_skopeo(&env, &r)
            .expect("certs")
            .contains("certificates"));
    }

    #[test]
    fn credentials_are_found_in_skopeo_s_order() {
        let root = tempfile::tempdir().expect("tempdir");
        let home = root.path().join("home");
        let runtime = root.path().join("run-user");
        let env = Environment::fake(
            &[
                ("HOME", home.to_str().expect("utf-8")),
                ("XDG_RUNTIME_DIR", runtime.to_str().expect("utf-8")),
            ],
            root.path(),
            1000,
        );
        let r = reference("docker://127.0.0.1:5000/cfs/rich:1");
        let docker = home.join(".docker/config.json");
        write(
            &docker,
            &format!(
                r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
                b64("d:dpw")
            ),
        );
        let found = credentials(&env, &r, None).expect("ok").expect("found");
        assert_eq!((found.user.as_str(), found.password.as_str()), ("d", "dpw"));
        // containers' own file comes before docker's, and a namespace key before the host.
        write(
            &runtime.join("containers/auth.json"),
            &format!(
                r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{}"}},"127.0.0.1:5000/cfs":{{"auth":"{}"}}}}}}"#,
                b64("host:1"),
                b64("ns:2")
            ),
        );
        let found = credentials(&env, &r, None).expect("ok").expect("found");
        assert_eq!(found.user, "ns");
        // An explicit auth file is read alone.
        let explicit = root.path().join("explicit.json");
        write(
            &explicit,
            &format!(
                r#"{{"auths":{{"http://127.0.0.1:5000/v2/":{{"auth":"{}"}}}}}}"#,
                b64("e:3")
            ),
        );
        let found = credentials(&env, &r, Some(&explicit))
            .expect("ok")
            .expect("found");
        assert_eq!(found.user, "e");
        let missing = root.path().join("missing.json");
        assert_eq!(credentials(&env, &r, Some(&missing)), Ok(None));
        let by_env = Environment::fake(
            &[
                ("HOME", home.to_str().expect("utf-8")),
                ("REGISTRY_AUTH_FILE", explicit.to_str().expect("utf-8")),
            ],
            root.path(),
            1000,
        );
        assert_eq!(
            credentials(&by_env, &r, None)
                .expect("ok")
                .expect("found")
                .user,
            "e"
        );
        // DOCKER_CONFIG replaces ~/.docker; without XDG_RUNTIME_DIR, /run/containers/UID.
        let docker_dir = root.path().join("docker-config");
        write(
            &docker_dir.join("config.json"),
            &format!(
                r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
                b64("dc:5")
            ),
        );
        let docker_env = Environment::fake(
            &[
                ("HOME", home.to_str().expect("utf-8")),
                ("DOCKER_CONFIG", docker_dir.to_str().expect("utf-8")),
            ],
            root.path(),
            1000,
        );
        assert_eq!(
            credentials(&docker_env, &r, None)
                .expect("ok")
                .expect("found")
                .user,
            "dc"
        );
        write(
            &root.path().join("run/containers/1000/auth.json"),
            &format!(
                r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{}"}}}}}}"#,
                b64("run:6")
            ),
        );
        assert_eq!(
            credentials(&docker_env, &r, None)
                .expect("ok")
                .expect("found")
                .user,
            "run"
        );
        // Docker Hub's legacy key.
        write(
            &home.join(".dockercfg"),
            &format!(
                r#"{{"https://index.docker.io/v1/":{{"auth":"{}"}}}}"#,
                b64("hub:4")
            ),
        );
        let hub = credentials(&env, &reference("docker://debian"), None)
            .expect("ok")
            .expect("found");
        assert_eq!(hub.user, "hub");
        // Helpers, stores and identity tokens are skopeo's business; broken entries are errors.
        for (text, why) in [
            (
                r#"{"credHelpers":{"127.0.0.1:5000":"pass"}}"#.to_owned(),
                "credential helper",
            ),
            (r#"{"credsStore":"desktop"}"#.to_owned(), "credential store"),
            (
                r#"{"auths":{"127.0.0.1:5000":{"identitytoken":"t"}}}"#.to_owned(),
                "identity token",
            ),
            (
                r#"{"auths":{"127.0.0.1:5000":{"auth":"!!"}}}"#.to_owned(),
                "base64",
            ),
            ("{".to_owned(), "cannot parse"),
        ] {
            write(&explicit, &text);
            let err = credentials(&env, &r, Some(&explicit)).expect_err(&text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
