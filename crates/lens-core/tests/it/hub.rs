//! The hub path for real: hf-hub's sync client downloads from a loopback HTTP server that
//! speaks the part of the HuggingFace hub protocol it uses, into a temporary cache, which is
//! then used offline.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lens_core::{load, LoadOptions, ModelSource, Origin, ResolveOptions};

use crate::common::{assert_message, assert_tensor_eq, toy_tokenizer, write_model_dir};

const COMMIT: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";

/// A hub serving one repo at one commit:
/// `GET /api/models/{repo}/revision/{rev}` (repo info) and
/// `GET /{repo}/resolve/{rev}/{file}` with `Range` (what hf-hub's sync `download` sends).
/// It stops when dropped.
struct LoopbackHub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackHub {
    fn start(repo_id: &str, files: BTreeMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let repo_id = repo_id.to_string();
        let thread = {
            let stop = stop.clone();
            let requests = requests.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let _ = serve(stream, &repo_id, &files, &requests);
                    }
                }
            })
        };
        LoopbackHub {
            addr,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for LoopbackHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn etag(data: &[u8]) -> String {
    // FNV-1a, enough to name blobs distinctly.
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:08x}", data.len())
}

fn serve(
    stream: TcpStream,
    repo_id: &str,
    files: &BTreeMap<String, Vec<u8>>,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range: Option<String> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method.is_empty() {
        return Ok(()); // the wake-up connection
    }
    requests.lock().unwrap().push(format!(
        "{method} {path}{}",
        range
            .as_deref()
            .map(|r| format!(" [{r}]"))
            .unwrap_or_default()
    ));

    let info_prefix = format!("/api/models/{repo_id}/revision/");
    let resolve_prefix = format!("/{repo_id}/resolve/main/");
    let mut stream = stream;
    if method == "GET" && path.starts_with(&info_prefix) {
        let siblings: Vec<serde_json::Value> = files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body =
            serde_json::json!({ "id": repo_id, "sha": COMMIT, "siblings": siblings }).to_string();
        return respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            body.as_bytes(),
        );
    }
    if let Some(file) = path.strip_prefix(&resolve_prefix) {
        if let Some(data) = files.get(file) {
            let size = data.len();
            let mut headers = vec![("x-repo-commit", COMMIT.to_string())];
            // The real hub gives LFS files an x-linked-etag and small files a plain etag.
            if file.ends_with(".safetensors") {
                headers.push(("x-linked-etag", format!("\"{}\"", etag(data))));
                headers.push(("etag", "\"pointer-file-etag\"".to_string()));
            } else {
                headers.push(("etag", format!("\"{}\"", etag(data))));
            }
            let (status, body) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
                Some(spec) => {
                    let (start, end) = spec.split_once('-').unwrap_or((spec, ""));
                    let start: usize = start.parse().unwrap_or(0).min(size);
                    let end: usize = if end.is_empty() {
                        size.saturating_sub(1)
                    } else {
                        end.parse::<usize>()
                            .unwrap_or(size)
                            .min(size.saturating_sub(1))
                    };
                    headers.push(("Content-Range", format!("bytes {start}-{end}/{size}")));
                    (
                        "206 Partial Content",
                        &data[start..=end.max(start).min(size - 1)],
                    )
                }
                None => ("200 OK", &data[..]),
            };
            return respond(&mut stream, status, &headers, body);
        }
    }
    respond(&mut stream, "404 Not Found", &[], b"Entry not found")
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn proxy_note() -> &'static str {
    if ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        " (a proxy variable is set; ureq 2 sends loopback requests through it)"
    } else {
        ""
    }
}

#[test]
fn download_from_the_hub_then_reuse_the_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let tok = toy_tokenizer();
    let tensors = write_model_dir(&source, false, Some(&tok));
    let repo_id = "loopback-org/toy-gpt2";
    let hub = LoopbackHub::start(repo_id, dir_files(&source));
    let hub_cache = tmp.path().join("hub-cache");
    let online = ResolveOptions {
        models_cache: Some(tmp.path().join("no-models")),
        hub_cache: Some(hub_cache.clone()),
        endpoint: Some(hub.endpoint()),
        offline: Some(false),
        ..Default::default()
    };

    let files = ModelSource::resolve(repo_id, &online)
        .unwrap_or_else(|e| panic!("download failed{}: {e}", proxy_note()));
    assert_eq!(
        files.origin,
        Origin::HubDownload {
            repo_id: repo_id.to_string(),
            revision: "main".to_string(),
            commit: COMMIT.to_string(),
            endpoint: hub.endpoint(),
        }
    );
    let repo_dir = hub_cache.join("models--loopback-org--toy-gpt2");
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    assert_eq!(files.dir, snapshot);
    assert_eq!(files.config, snapshot.join("config.json"));
    assert_eq!(files.weights, vec![snapshot.join("model.safetensors")]);
    assert_eq!(files.tokenizer, Some(snapshot.join("tokenizer.json")));
    // The standard cache layout: refs/main names the commit, snapshot files link to blobs.
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    let link = std::fs::read_link(snapshot.join("model.safetensors")).unwrap();
    assert!(link.starts_with("../../blobs"), "{}", link.display());
    for (name, data) in dir_files(&source) {
        assert_eq!(std::fs::read(snapshot.join(&name)).unwrap(), data, "{name}");
    }
    let requests = hub.requests();
    assert!(
        requests.contains(&format!("GET /api/models/{repo_id}/revision/main")),
        "{requests:?}"
    );
    assert!(
        requests.contains(&format!(
            "GET /{repo_id}/resolve/main/model.safetensors [bytes=0-0]"
        )),
        "{requests:?}"
    );

    // Online again: the complete cached snapshot is used without a request.
    let n = requests.len();
    let again = ModelSource::resolve(repo_id, &online).unwrap();
    assert_eq!(hub.requests().len(), n, "{:?}", hub.requests());
    assert!(
        matches!(again.origin, Origin::HubCache { .. }),
        "{:?}",
        again.origin
    );

    // Without the server, offline: the cache alone.
    let endpoint = hub.endpoint();
    drop(hub);
    let offline = ResolveOptions {
        offline: Some(true),
        ..online
    };
    let model = load(
        repo_id,
        &LoadOptions {
            resolve: offline.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        model.files.origin,
        Origin::HubCache {
            repo_id: repo_id.to_string(),
            revision: "main".to_string(),
            commit: COMMIT.to_string(),
        }
    );
    for (name, t) in &tensors {
        assert_tensor_eq(&model.weights.get(name).unwrap(), t);
    }
    let tokenizer = model.tokenizer.expect("tokenizer.json was downloaded");
    assert_eq!(tokenizer.to_single_token("quick").unwrap(), 4);

    // An id that was never downloaded fails offline, naming the dead endpoint it did not try.
    let err = ModelSource::resolve("loopback-org/other", &offline).unwrap_err();
    assert_message(
        &err,
        &[&format!(
            "HuggingFace hub {endpoint}: not contacted, offline"
        )],
    );
}

#[test]
fn download_a_sharded_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    let tensors = write_model_dir(&source, true, None);
    let repo_id = "sharded";
    let hub = LoopbackHub::start(repo_id, dir_files(&source));
    let opts = LoadOptions {
        resolve: ResolveOptions {
            models_cache: Some(tmp.path().join("no-models")),
            hub_cache: Some(tmp.path().join("hub-cache")),
            endpoint: Some(hub.endpoint()),
            offline: Some(false),
            ..Default::default()
        },
        ..Default::default()
    };
    let model =
        load(repo_id, &opts).unwrap_or_else(|e| panic!("download failed{}: {e}", proxy_note()));
    assert!(matches!(model.files.origin, Origin::HubDownload { .. }));
    assert_eq!(model.files.weights.len(), 2);
    assert!(model.files.weights_index.is_some());
    assert!(model.tokenizer.is_none());
    for (name, t) in &tensors {
        assert_tensor_eq(&model.weights.get(name).unwrap(), t);
    }
}

#[test]
fn hub_errors_are_reported_with_the_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(
        source.join("config.json"),
        crate::common::tiny_config_json(),
    )
    .unwrap();
    std::fs::write(source.join("pytorch_model.bin"), b"pickle").unwrap();
    let hub = LoopbackHub::start("org/pickled", dir_files(&source));
    let opts = ResolveOptions {
        models_cache: Some(tmp.path().join("no-models")),
        hub_cache: Some(tmp.path().join("hub-cache")),
        endpoint: Some(hub.endpoint()),
        offline: Some(false),
        ..Default::default()
    };
    let err = ModelSource::resolve("org/pickled", &opts).unwrap_err();
    assert_message(
        &err,
        &[
            &format!("HuggingFace hub {}", hub.endpoint()),
            "has no model.safetensors or model.safetensors.index.json",
            "pytorch_model.bin",
        ],
    );
    // A repo the hub does not have.
    let err = ModelSource::resolve("org/absent", &opts).unwrap_err();
    assert_message(&err, &["cannot list repo 'org/absent'", "404"]);
}
