//! Fetching `docker://` images straight from the registry (the OCI distribution API over
//! HTTP(S)), without skopeo's proxy process and the pipe between us.
//!
//! The direct client covers the case where it fetches exactly what skopeo would: an OCI
//! manifest (or an index resolved to this platform's OCI manifest), anonymous, password or
//! bearer-token access, credentials from the same auth files, the system's CA roots, and no
//! configuration that makes skopeo fetch differently ([`config::needs_skopeo`]). Anything else
//! is handed to skopeo by [`crate::open_source`]. A Docker schema 2 manifest is one of those:
//! skopeo hands out such manifests converted to OCI, and the stored manifest must be the same
//! whichever way an image came.
//!
//! Blobs are streamed from the response body through a [`VerifyingReader`], so a layer is
//! accepted only once its size and digest have been checked.

pub mod config;
pub mod reference;

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use ureq::http::{Response, StatusCode};
use ureq::{Body, ResponseExt as _};

use crate::digest::{DigestAlgorithm, OciDigest};
use crate::error::OciError;
use crate::model::{media_type, Descriptor, Index};
use crate::source::{FetchOptions, ImageSource, VerifyingReader, JSON_LIMIT};
use config::{Credentials, Environment};
use reference::{DockerReference, Target};

/// Manifest types we ask for, OCI first.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a response's headers, and for each read of a body: a registry that stops
/// sending fails the pull instead of hanging it.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest error or token response we read.
const SMALL_BODY_LIMIT: u64 = 1 << 20;

/// The outcome of [`RegistrySource::open`].
#[derive(Debug)]
pub enum Opened {
    /// The image can be fetched directly.
    Direct(Box<RegistrySource>),
    /// Only skopeo fetches this image as skopeo would; the reason.
    NeedsSkopeo(String),
}

/// An image on a registry, fetched directly.
#[derive(Debug)]
pub struct RegistrySource {
    text: String,
    client: Client,
    manifest: (OciDigest, Vec<u8>),
}

impl RegistrySource {
    /// Open `text` (`docker://…`): check the configuration, authenticate if asked to, and
    /// fetch the manifest (resolving an index to this platform's manifest).
    pub fn open(text: &str, opts: &FetchOptions) -> Result<Opened, OciError> {
        Self::open_in(&Environment::current(), text, opts)
    }

    fn open_in(env: &Environment, text: &str, opts: &FetchOptions) -> Result<Opened, OciError> {
        // A reference we cannot read may still be one skopeo can; if not, it says so itself.
        let reference = match DockerReference::parse(text) {
            Ok(r) => r,
            Err(e) => return Ok(Opened::NeedsSkopeo(e.to_string())),
        };
        if let Some(why) = config::needs_skopeo(env, &reference) {
            return Ok(Opened::NeedsSkopeo(why));
        }
        let credentials = match &opts.credentials {
            Some(given) => Some(given.clone()),
            None => match config::credentials(env, &reference, opts.authfile.as_deref()) {
                Ok(c) => c,
                Err(why) => return Ok(Opened::NeedsSkopeo(why)),
            },
        };
        let mut client = Client::new(reference, credentials, opts.insecure);
        if opts.insecure {
            client.choose_scheme()?;
        }
        let mut target = client.reference.target_text();
        let mut expected = match &client.reference.target {
            Target::Digest(d) => Some(d.clone()),
            Target::Tag(_) => None,
        };
        // Indexes may nest; a few levels are plenty.
        for _ in 0..4 {
            let fetched = client.manifest(&target, expected.as_ref())?;
            match fetched.media_type.as_str() {
                media_type::OCI_MANIFEST => {
                    if let Some(why) = needs_skopeo_for_manifest(&fetched) {
                        return Ok(Opened::NeedsSkopeo(why));
                    }
                    return Ok(Opened::Direct(Box::new(RegistrySource {
                        text: text.to_owned(),
                        client,
                        manifest: (fetched.digest, fetched.bytes),
                    })));
                }
                media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST => {
                    let what = format!("image index {}", fetched.digest);
                    let index = Index::parse(&what, &fetched.bytes)?;
                    let arch = crate::model::host_architecture();
                    let Some(entry) = pick_from_index(&index, arch) else {
                        return Ok(Opened::NeedsSkopeo(format!(
                            "{what} has no single plain entry for linux/{arch} (skopeo ranks \
                             variants and normalises architecture names)"
                        )));
                    };
                    target = entry.digest.to_string();
                    expected = Some(entry.digest.clone());
                }
                media_type::DOCKER_MANIFEST => {
                    return Ok(Opened::NeedsSkopeo(
                        "a Docker schema 2 manifest, which skopeo converts to OCI".into(),
                    ));
                }
                other => {
                    return Ok(Opened::NeedsSkopeo(format!("a manifest of type {other:?}")));
                }
            }
        }
        Err(OciError::Invalid {
            what: text.to_owned(),
            reason: "image indexes nested too deeply".into(),
        })
    }
}

impl ImageSource for RegistrySource {
    fn describe(&self) -> String {
        self.text.clone()
    }

    fn via(&self) -> String {
        format!("registry ({})", self.client.base)
    }

    fn manifest(&self) -> Result<(OciDigest, Vec<u8>), OciError> {
        Ok(self.manifest.clone())
    }

    fn open_blob<'a>(
        &'a self,
        what: &str,
        desc: &Descriptor,
    ) -> Result<Box<dyn Read + Send + 'a>, OciError> {
        let path = format!(
            "/v2/{}/blobs/{}",
            self.client.reference.repository, desc.digest
        );
        let context = format!("{what} {}", desc.digest);
        let response = self.client.get(&path, None, &context)?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(OciError::MissingBlob {
                    what: what.to_owned(),
                    digest: desc.digest.clone(),
                    location: self.text.clone(),
                })
            }
            _ => return Err(self.client.refusal(&context, response)),
        }
        let body = response.into_body().into_reader();
        Ok(Box::new(VerifyingReader::new(body, desc)))
    }
}

/// The index entry for linux/`arch`, when there is exactly one plain candidate. skopeo ranks
/// variants and compression annotations, accepts entries without a platform and normalises
/// architecture names (`x86_64`); only a single plain entry is sure to resolve the same way
/// here. `None` leaves the choice (or the error) to skopeo.
fn pick_from_index<'i>(index: &'i Index, arch: &str) -> Option<&'i Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_none_or(|p| p.os == "linux" && p.architecture == arch)
        })
        .collect();
    match candidates.as_slice() {
        [one] if one.platform.as_ref().is_some_and(|p| p.variant.is_none()) => Some(*one),
        _ => None,
    }
}

/// Why an OCI manifest must go to skopeo after all: blobs with `urls` (foreign layers), which
/// skopeo fetches from those URLs.
fn needs_skopeo_for_manifest(fetched: &FetchedManifest) -> Option<String> {
    let manifest: serde_json::Value = serde_json::from_slice(&fetched.bytes).ok()?;
    let has_urls = |d: &serde_json::Value| {
        d.get("urls")
            .and_then(|u| u.as_array())
            .is_some_and(|u| !u.is_empty())
    };
    let layers = manifest.get("layers").and_then(|l| l.as_array());
    let foreign = layers.is_some_and(|l| l.iter().any(has_urls))
        || manifest.get("config").is_some_and(has_urls);
    foreign.then(|| "the manifest names blobs by URL (foreign layers)".into())
}

/// A manifest as the registry sent it.
struct FetchedManifest {
    digest: OciDigest,
    media_type: String,
    bytes: Vec<u8>,
}

/// One registry repository, with the authorization that works for it.
struct Client {
    agent: ureq::Agent,
    reference: DockerReference,
    /// `https://HOST` or, for an insecure registry that does not speak TLS, `http://HOST`.
    base: String,
    insecure: bool,
    credentials: Option<Credentials>,
    /// The `Authorization` header that last worked (or was issued).
    authorization: Mutex<Option<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

/// The `Authorization` value for HTTP basic authentication.
fn basic(credentials: &Credentials) -> String {
    let pair = format!("{}:{}", credentials.user, credentials.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Percent-encode a query parameter value.
fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A response's whole body, refused past `limit` bytes (a registry's answer is read into
/// memory, so it must not be allowed to grow without bound).
fn read_body(response: Response<Body>, limit: u64) -> Result<Vec<u8>, ureq::Error> {
    response
        .into_body()
        .into_with_config()
        .limit(limit)
        .read_to_vec()
}

/// A failed request, described, with what to do about a refused certificate (rustls calls
/// every reason an "invalid peer certificate": unknown issuer, expired, another name).
fn call_failed(e: &ureq::Error) -> String {
    let text = e.to_string();
    if text.contains("invalid peer certificate") {
        format!(
            "{text} (the server's certificate was refused; if its CA is one you trust, add it \
             to the system's trust store (update-ca-certificates), or pass --tls-verify=false)"
        )
    } else {
        text
    }
}

/// A parsed `WWW-Authenticate` challenge: the scheme and its parameters.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    /// Parse `Scheme key="value", key=value, …`: one challenge (a registry that offers
    /// several sends a header for each).
    fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, mut rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if rest.is_empty() {
                break;
            }
            let (key, after) = rest.split_once('=')?;
            let key = key.trim().to_ascii_lowercase();
            let after = after.trim_start();
            let value;
            if let Some(quoted) = after.strip_prefix('"') {
                let mut text = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => text.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => text.push(c),
                    }
                }
                rest = &quoted[end?..];
                value = text;
            } else {
                let end = after.find(',').unwrap_or(after.len());
                value = after[..end].trim().to_owned();
                rest = &after[end..];
            }
            params.push((key, value));
        }
        Some(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        })
    }

    /// The challenge to answer when a registry sends several (one per header, as
    /// containers/image reads them): the first whose scheme we speak, else the first, so the
    /// error names what was asked for.
    fn pick(challenges: Vec<Challenge>) -> Option<Challenge> {
        let supported = challenges
            .iter()
            .position(|c| matches!(c.scheme.as_str(), "basic" | "bearer"))
            .unwrap_or(0);
        challenges.into_iter().nth(supported)
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(serde::Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn agent(insecure: bool) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .disable_verification(insecure)
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Proxies are skopeo's business (config::needs_skopeo).
        .proxy(None)
        // A verified registry may not redirect us to plain HTTP.
        .https_only(!insecure)
        // As Go's client: credentials follow a redirect on the same host only.
        .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
        .tls_config(tls)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(STALL_TIMEOUT))
        .timeout_per_read(Some(STALL_TIMEOUT))
        .user_agent(concat!("cfsctl/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

impl Client {
    fn new(reference: DockerReference, credentials: Option<Credentials>, insecure: bool) -> Self {
        Client {
            agent: agent(insecure),
            base: format!("https://{}", reference.api_host()),
            reference,
            insecure,
            credentials,
            authorization: Mutex::new(None),
        }
    }

    fn registry_error(&self, what: &str, reason: impl Into<String>) -> OciError {
        OciError::Registry {
            registry: self.reference.registry.clone(),
            what: what.to_owned(),
            reason: reason.into(),
        }
    }

    fn current_authorization(&self) -> Option<String> {
        self.authorization
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// GET `path` on the registry, authenticating once if it asks (401 with a challenge).
    /// Any status other than 401 is returned for the caller to judge.
    fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response<Body>, OciError> {
        let url = format!("{}{path}", self.base);
        let mut challenged = false;
        loop {
            let mut request = self.agent.get(&url);
            if let Some(accept) = accept {
                request = request.header("Accept", accept);
            }
            if let Some(authorization) = self.current_authorization() {
                request = request.header("Authorization", authorization);
            }
            let response = request
                .call()
                .map_err(|e| self.registry_error(what, format!("{url}: {}", call_failed(&e))))?;
            if response.status() != StatusCode::UNAUTHORIZED || challenged {
                return Ok(response);
            }
            challenged = true;
            // Credentials go to the registry only, not to wherever it redirected us.
            let answered_by = response
                .get_uri()
                .authority()
                .map(|a| a.as_str().to_owned());
            if answered_by.as_deref() != Some(self.reference.api_host()) {
                return Err(self.refusal(what, response));
            }
            let challenges: Vec<Challenge> = response
                .headers()
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter_map(Challenge::parse)
                .collect();
            let Some(challenge) = Challenge::pick(challenges) else {
                return Err(self.refusal(what, response));
            };
            self.authenticate(&challenge, what)?;
        }
    }

    /// Answer a challenge: basic credentials, or a bearer token from the challenge's realm.
    fn authenticate(&self, challenge: &Challenge, what: &str) -> Result<(), OciError> {
        let authorization =
            match challenge.scheme.as_str() {
                "basic" => match &self.credentials {
                    Some(c) => basic(c),
                    None => return Err(self.registry_error(
                        what,
                        "the registry asks for a user name and password; log in (podman login, \
                         docker login), or pass --authfile or --creds",
                    )),
                },
                "bearer" => self.token(challenge, what)?,
                other => {
                    return Err(self.registry_error(
                        what,
                        format!(
                            "the registry asks for {other:?} authentication, which we do not speak"
                        ),
                    ))
                }
            };
        *self
            .authorization
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(authorization);
        Ok(())
    }

    /// Fetch a pull token for the repository from the challenge's realm.
    fn token(&self, challenge: &Challenge, what: &str) -> Result<String, OciError> {
        let realm = challenge.param("realm").ok_or_else(|| {
            self.registry_error(what, "the registry's bearer challenge names no realm")
        })?;
        if !(realm.starts_with("https://") || (self.insecure && realm.starts_with("http://"))) {
            return Err(self.registry_error(
                what,
                format!("the token realm {realm:?} is not an https:// URL"),
            ));
        }
        let mut url = format!(
            "{realm}{}scope={}",
            if realm.contains('?') { '&' } else { '?' },
            query_value(&format!("repository:{}:pull", self.reference.repository))
        );
        if let Some(service) = challenge.param("service") {
            url.push_str(&format!("&service={}", query_value(service)));
        }
        if let Some(c) = &self.credentials {
            url.push_str(&format!("&account={}", query_value(&c.user)));
        }
        let mut request = self.agent.get(&url);
        if let Some(c) = &self.credentials {
            request = request.header("Authorization", basic(c));
        }
        let context = format!("{what}: getting a token from {realm}");
        let response = request
            .call()
            .map_err(|e| self.registry_error(&context, call_failed(&e)))?;
        if response.status() != StatusCode::OK {
            return Err(self.refusal(&context, response));
        }
        let bytes = read_body(response, SMALL_BODY_LIMIT)
            .map_err(|e| self.registry_error(&context, e.to_string()))?;
        let parsed: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|e| self.registry_error(&context, format!("not a token response: {e}")))?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| self.registry_error(&context, "the response holds no token"))
    }

    /// An error for an unexpected response, with the registry's own explanation if it gave one.
    fn refusal(&self, what: &str, response: Response<Body>) -> OciError {
        let status = response.status();
        let text = read_body(response, SMALL_BODY_LIMIT).unwrap_or_default();
        let detail = match serde_json::from_slice::<ErrorBody>(&text) {
            Ok(body) if !body.errors.is_empty() => body
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            _ => String::from_utf8_lossy(&text)
                .chars()
                .take(200)
                .collect::<String>()
                .trim()
                .to_owned(),
        };
        let reason = if detail.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status} ({detail})")
        };
        self.registry_error(what, reason)
    }

    /// For an insecure registry, skopeo's rule: HTTPS without verification if the registry
    /// speaks it, else plain HTTP. Decided by pinging `/v2/` (any HTTP answer over HTTPS; 200
    /// or 401 over HTTP) before anything, credentials included, is sent.
    fn choose_scheme(&mut self) -> Result<(), OciError> {
        let ping = |base: &str| self.agent.get(&format!("{base}/v2/")).call();
        let tls_error = match ping(&self.base) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        // Plain HTTP only if a registry answers there (200, or 401 asking for credentials), as
        // containers/image decides; an HTTPS server's "400, plain HTTP to an HTTPS port" must
        // not hide the TLS error.
        let http = format!("http://{}", self.reference.api_host());
        let why = match ping(&http) {
            Ok(r) if r.status() == StatusCode::OK || r.status() == StatusCode::UNAUTHORIZED => {
                self.base = http;
                return Ok(());
            }
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.to_string(),
        };
        Err(self.registry_error(
            "reaching /v2/",
            format!("over HTTPS: {tls_error}; over HTTP: {why}"),
        ))
    }

    /// Fetch a manifest by tag or digest (checking it against `expected`).
    fn manifest(
        &mut self,
        target: &str,
        expected: Option<&OciDigest>,
    ) -> Result<FetchedManifest, OciError> {
        let path = format!("/v2/{}/manifests/{target}", self.reference.repository);
        let what = format!("manifest of {}", self.reference);
        let response = self.get(&path, Some(MANIFEST_ACCEPT), &what)?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(self.registry_error(
                    &what,
                    format!("no manifest {target} in {}", self.reference.repository),
                ))
            }
            _ => return Err(self.refusal(&what, response)),
        }
        let header_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let bytes = read_body(response, JSON_LIMIT)
            .map_err(|e| self.registry_error(&what, e.to_string()))?;
        let digest = match expected {
            Some(d) if !d.matches(&bytes) => {
                return Err(OciError::BlobMismatch {
                    what: what.clone(),
                    digest: d.clone(),
                    reason: "the registry sent a manifest with another digest".into(),
                })
            }
            Some(d) => d.clone(),
            None => OciDigest::of(DigestAlgorithm::Sha256, &bytes),
        };
        // The document's own mediaType wins over a generic Content-Type.
        #[derive(serde::Deserialize)]
        struct Typed {
            #[serde(rename = "mediaType", default)]
            media_type: Option<String>,
        }
        let declared = serde_json::from_slice::<Typed>(&bytes)
            .ok()
            .and_then(|t| t.media_type);
        let media_type = declared
            .or(header_type)
            .unwrap_or_else(|| media_type::OCI_MANIFEST.to_owned());
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#,
        )
        .expect("bearer");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/debian:pull"));
        let c =
            Challenge::parse(r#"Basic realm="a \"quoted\" realm", charset=UTF-8"#).expect("basic");
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some(r#"a "quoted" realm"#));
        assert_eq!(c.param("charset"), Some("UTF-8"));
        assert_eq!(Challenge::parse("Basic").expect("bare").params, vec![]);
        assert_eq!(Challenge::parse(""), None);
        assert_eq!(Challenge::parse(r#"Bearer realm="unterminated"#), None);
        assert_eq!(Challenge::parse("Bearer realm"), None);
    }

    #[test]
    fn the_first_spoken_challenge_is_answered() {
        let parse = |headers: &[&str]| {
            Challenge::pick(
                headers
                    .iter()
                    .copied()
                    .filter_map(Challenge::parse)
                    .collect(),
            )
            .map(|c| c.scheme)
        };
        assert_eq!(
            parse(&["Negotiate", r#"Bearer realm="https://r/token""#, "Basic"]),
            Some("bearer".to_owned())
        );
        assert_eq!(parse(&["Negotiate", "NTLM"]), Some("negotiate".to_owned()));
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn only_a_single_plain_index_entry_is_picked_here() {
        const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        let index = |entries: &str| {
            Index::parse(
                "i",
                format!(r#"{{"schemaVersion":2,"manifests":[{entries}]}}"#).as_bytes(),
            )
            .expect("index")
        };
        let entry = |digest: &str, platform: &str| {
            format!(
                r#"{{"mediaType":"{}","digest":"{digest}","size":1{platform}}}"#,
                media_type::OCI_MANIFEST
            )
        };
        let amd64 = r#","platform":{"os":"linux","architecture":"amd64"}"#;
        let arm64 = r#","platform":{"os":"linux","architecture":"arm64"}"#;
        let v3 = r#","platform":{"os":"linux","architecture":"amd64","variant":"v3"}"#;
        let two = index(&format!("{},{}", entry(D1, amd64), entry(D2, arm64)));
        assert_eq!(
            pick_from_index(&two, "amd64").map(|d| d.digest.to_string()),
            Some(D1.to_owned())
        );
        assert_eq!(
            pick_from_index(&two, "arm64").map(|d| d.digest.to_string()),
            Some(D2.to_owned())
        );
        assert_eq!(pick_from_index(&two, "s390x"), None);
        for ambiguous in [
            index(&format!("{},{}", entry(D1, amd64), entry(D2, v3))),
            index(&format!("{},{}", entry(D1, amd64), entry(D2, ""))),
            index(&entry(D1, v3)),
        ] {
            assert_eq!(pick_from_index(&ambiguous, "amd64"), None);
        }
    }

    #[test]
    fn foreign_layers_go_to_skopeo() {
        let manifest = |layer_extra: &str| FetchedManifest {
            digest: OciDigest::of(DigestAlgorithm::Sha256, b""),
            media_type: media_type::OCI_MANIFEST.into(),
            bytes: format!(
                r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"d","size":1}},
                   "layers":[{{"mediaType":"y","digest":"d","size":1{layer_extra}}}]}}"#
            )
            .into_bytes(),
        };
        assert_eq!(needs_skopeo_for_manifest(&manifest("")), None);
        assert_eq!(needs_skopeo_for_manifest(&manifest(r#","urls":[]"#)), None);
        assert!(needs_skopeo_for_manifest(&manifest(r#","urls":["https://x/y"]"#)).is_some());
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(
            query_value("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(query_value("Az09-._~"), "Az09-._~");
    }

    #[test]
    fn an_unreachable_registry_is_a_clear_error() {
        // A port nothing listens on: both HTTPS and HTTP fail, and the message says so.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("etc/containers")).expect("mkdir");
        std::fs::write(
            root.path().join("etc/containers/policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("policy");
        let env = Environment::fake(&[], root.path(), 1000);
        let opts = FetchOptions {
            insecure: true,
            ..FetchOptions::default()
        };
        let text = format!("docker://127.0.0.1:{port}/a/b:1");
        let err = RegistrySource::open_in(&env, &text, &opts).expect_err("nothing listens");
        let msg = err.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(
            msg.contains("over HTTPS") && msg.contains("over HTTP:"),
            "{msg}"
        );
    }
}
