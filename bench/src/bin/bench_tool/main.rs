//! The helpers `bench/run.sh` drives: tokens, seeded jobs, idle connections and
//! long-poll waiters, the realistic load (L), the side-channel probe (S) and the
//! scale steps. Each prints what the script needs on stdout.

mod client;
mod load;
mod measure;
mod scale;
mod side;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Parser, Subcommand};
use compositions_jobs::config::{Config, JobsConfig};
use compositions_jobs::jobs::{Failure, Kind, Link, NewJob, Outcome, Timestamp};
use compositions_jobs::{Access, JobStore, Store};
use jsonwebtoken::EncodingKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use uuid::Uuid;

/// The issuer and audience the benchmarked service is configured with.
const ISSUER: &str = "https://auth.bench.ehealth.example";
const AUDIENCE: &str = "compositions-jobs";
const TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) type Failed = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokens for one client, one per line, each different from every other (a
    /// `jti` of its own): signed with `--alg`, with a wrong signature, or garbage.
    /// With `--cache-dir` the tokens go to a file there, reused while it holds
    /// enough of them and is less than a day old, and its path is printed.
    Tokens {
        /// The PKCS#8 PEM key (the test key set's RSA or Ed25519 key); not read
        /// for `--garbage`.
        #[arg(long, required_unless_present = "garbage")]
        key: Option<PathBuf>,
        #[arg(long)]
        client_id: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, value_enum, default_value_t = Alg::Rs256)]
        alg: Alg,
        /// The header's kid [default: test-rsa for RS256, test-ed for EdDSA].
        #[arg(long)]
        kid: Option<String>,
        /// A signature of the right length that is wrong, so that verification
        /// runs in full and fails at its last step. RS256: random bytes below
        /// the modulus, no signing; EdDSA: signed, then a bit of R flipped.
        #[arg(long)]
        bad_signature: bool,
        /// Not a JWT: three dot-separated runs of base64url characters, about as
        /// long as an RS256 token's parts, the first of a length no base64 decodes.
        #[arg(long, conflicts_with_all = ["bad_signature", "key"])]
        garbage: bool,
        /// Keep the tokens in a file in this directory (see above).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Token n acts for its own client, `<client-id>-<n>` (scenario L).
        #[arg(long)]
        numbered_clients: bool,
    },
    /// What verifying one new token costs, in this process, on one core: the
    /// service's whole verifier (caches off) and the signature check alone, for
    /// RS256 and EdDSA. Prints one JSON line.
    VerifyCost {
        /// The test key set (`tests/fixtures`), for its keys and JWKS.
        #[arg(long)]
        fixtures: PathBuf,
        #[arg(long, default_value_t = 3000)]
        count: usize,
    },
    /// Jobs of one client: PENDING (due in a day), DONE and FAILED in turn; prints ids.
    Seed {
        #[arg(long)]
        database: String,
        #[arg(long)]
        client_id: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Only PENDING jobs.
        #[arg(long)]
        pending: bool,
    },
    /// Opens keep-alive connections, one request each, and holds them.
    Idle {
        #[arg(long)]
        address: SocketAddr,
        #[arg(long)]
        connections: usize,
        /// How long to hold them once all are open.
        #[arg(long, default_value_t = 5)]
        hold_seconds: u64,
    },
    /// Long polls: `per_job` waiters on each job of `jobs`, then finishes the jobs
    /// one by one and reports how long each waiter took to hear of it.
    Longpoll {
        /// The service to poll; absent, one is started in this process and the
        /// jobs are finished through its own store.
        #[arg(long)]
        address: Option<SocketAddr>,
        #[arg(long)]
        database: String,
        /// A file with one job id per line (all PENDING, of `client_id`).
        #[arg(long)]
        jobs: PathBuf,
        #[arg(long, default_value_t = 10)]
        per_job: usize,
        #[arg(long)]
        token: String,
        /// The server's pid, to report its RSS while everyone waits.
        #[arg(long)]
        server_pid: Option<u32>,
        /// For the in-process server: its JWKS, issuer and audience come from here.
        #[arg(long)]
        jwks: Option<PathBuf>,
    },
    /// Scenario L: thousands of clients polling tens of thousands of jobs at their
    /// Retry-After while a producer finishes and creates jobs; checks every
    /// answer and prints one JSON line of measurements.
    Load(load::LoadArgs),
    /// Scenario S: another client's 404 for a cached job against a 404 for an
    /// unknown id, in pairs; prints one JSON line.
    SideChannel(side::SideArgs),
    /// make bench-scale: RSS per idle keep-alive connection, or per long-poll
    /// waiter (and their wake-ups); prints one JSON line.
    Connections(scale::ConnectionsArgs),
}

#[tokio::main]
async fn main() -> Result<(), Failed> {
    match Cli::parse().command {
        Command::Tokens {
            key,
            client_id,
            count,
            alg,
            kid,
            bad_signature,
            garbage,
            cache_dir,
            numbered_clients,
        } => {
            let kind = if garbage {
                TokenKind::Garbage
            } else {
                TokenKind::Signed {
                    alg,
                    kid: kid.unwrap_or_else(|| alg.default_kid().into()),
                    bad_signature,
                }
            };
            let spec = TokenSpec {
                key: key.as_deref().map(std::fs::read).transpose()?,
                client_id,
                numbered_clients,
                kind,
            };
            match cache_dir {
                Some(dir) => println!("{}", cached_tokens(&spec, count, &dir)?.display()),
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(generate_tokens(&spec, count)?.as_bytes())?;
                    out.flush()?;
                }
            }
            Ok(())
        }
        Command::VerifyCost { fixtures, count } => verify_cost(&fixtures, count),
        Command::Seed {
            database,
            client_id,
            count,
            pending,
        } => seed(&database, &client_id, count, pending).await,
        Command::Idle {
            address,
            connections,
            hold_seconds,
        } => idle(address, connections, Duration::from_secs(hold_seconds)).await,
        Command::Longpoll {
            address,
            database,
            jobs,
            per_job,
            token,
            server_pid,
            jwks,
        } => longpoll(address, &database, &jobs, per_job, &token, server_pid, jwks).await,
        Command::Load(args) => load::load(args).await,
        Command::SideChannel(args) => side::side_channel(args).await,
        Command::Connections(args) => scale::connections(args).await,
    }
}

/// A token file under `--cache-dir` is reused while it is younger than this...
const TOKEN_FILE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// ...so its tokens are made to stay valid this long: two days and more after
/// the file's last reuse, so that none expires during a run.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3 * 24 * 3600);

/// The algorithm of a signed token (and so which key `--key` is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Alg {
    Rs256,
    Eddsa,
}

impl Alg {
    fn default_kid(self) -> &'static str {
        match self {
            Self::Rs256 => "test-rsa",
            Self::Eddsa => "test-ed",
        }
    }

    fn header_name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Eddsa => "EdDSA",
        }
    }
}

enum TokenKind {
    Signed {
        alg: Alg,
        kid: String,
        bad_signature: bool,
    },
    Garbage,
}

/// What `bench-tool tokens` was asked for.
struct TokenSpec {
    /// The PEM key's bytes (absent for garbage).
    key: Option<Vec<u8>>,
    client_id: String,
    /// Token n is for client `<client_id>-<n>`.
    numbered_clients: bool,
    kind: TokenKind,
}

impl TokenSpec {
    /// What the tokens are, for file names and messages.
    fn label(&self) -> String {
        match &self.kind {
            TokenKind::Signed {
                alg,
                bad_signature: false,
                ..
            } => format!("{alg:?}").to_lowercase(),
            TokenKind::Signed {
                alg,
                bad_signature: true,
                ..
            } => format!("{alg:?}-bad-signature").to_lowercase(),
            TokenKind::Garbage => "garbage".into(),
        }
    }

    /// The client token `n` acts for.
    fn client_of(&self, n: usize) -> String {
        if self.numbered_clients {
            format!("{}-{n}", self.client_id)
        } else {
            self.client_id.clone()
        }
    }

    /// The cache file's name: the label and a digest of everything the tokens
    /// depend on (key, kid, client, issuer, audience, this format's version), so
    /// that a changed key or configuration never reuses a stale file. Bump the
    /// version when what the tokens hold changes.
    fn file_name(&self) -> String {
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [
            b"bench-tool tokens v1".as_slice(),
            ISSUER.as_bytes(),
            AUDIENCE.as_bytes(),
            self.client_id.as_bytes(),
            self.key.as_deref().unwrap_or_default(),
        ] {
            context.update(&(part.len() as u64).to_le_bytes());
            context.update(part);
        }
        if let TokenKind::Signed { kid, .. } = &self.kind {
            context.update(kid.as_bytes());
        }
        let digest = context.finish();
        let hex: String = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let numbered = if self.numbered_clients {
            "-numbered"
        } else {
            ""
        };
        format!("{}-{}{numbered}-{hex}.tokens", self.label(), self.client_id)
    }
}

/// The path of a file in `dir` with at least `count` tokens of `spec`, less than a
/// day old: an existing one, else a new one. Says on stderr which, and how long
/// generating took.
fn cached_tokens(spec: &TokenSpec, count: usize, dir: &Path) -> Result<PathBuf, Failed> {
    let path = dir.join(spec.file_name());
    if let Ok(metadata) = std::fs::metadata(&path) {
        let age = metadata.modified()?.elapsed().unwrap_or(Duration::MAX);
        if age < TOKEN_FILE_MAX_AGE {
            let held = bytecount_lines(&std::fs::read(&path)?);
            if held >= count {
                eprintln!(
                    "tokens: {count} {} tokens from {} ({held} there, made {:.1} h ago)",
                    spec.label(),
                    path.display(),
                    age.as_secs_f64() / 3600.0
                );
                return Ok(path);
            }
        }
    }
    std::fs::create_dir_all(dir)?;
    let started = Instant::now();
    let text = generate_tokens(spec, count)?;
    let took = started.elapsed();
    // Written whole, then renamed: a file there is always complete.
    let partial = path.with_extension(format!("partial.{}", std::process::id()));
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, &path)?;
    eprintln!(
        "tokens: generated {count} {} tokens in {:.1} s on {} threads into {}",
        spec.label(),
        took.as_secs_f64(),
        threads(),
        path.display()
    );
    Ok(path)
}

fn bytecount_lines(text: &[u8]) -> usize {
    text.iter().filter(|&&b| b == b'\n').count()
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A key pair parsed once: jsonwebtoken's aws-lc backend parses (and checks) the
/// RSA key again for every signature.
enum SigningKey {
    Rsa(aws_lc_rs::signature::RsaKeyPair),
    Ed25519(aws_lc_rs::signature::Ed25519KeyPair),
}

impl SigningKey {
    fn from_pem(alg: Alg, pem: &[u8]) -> Result<Self, Failed> {
        Ok(match alg {
            Alg::Rs256 => Self::Rsa(
                aws_lc_rs::signature::RsaKeyPair::from_der(
                    EncodingKey::from_rsa_pem(pem)?.as_bytes(),
                )
                .map_err(|e| format!("the RSA key: {e}"))?,
            ),
            Alg::Eddsa => Self::Ed25519(
                aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(
                    EncodingKey::from_ed_pem(pem)?.as_bytes(),
                )
                .map_err(|e| format!("the Ed25519 key: {e}"))?,
            ),
        })
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Failed> {
        match self {
            Self::Rsa(key) => {
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    message,
                    &mut signature,
                )
                .map_err(|_| "RSA signing failed")?;
                Ok(signature)
            }
            Self::Ed25519(key) => Ok(key.sign(message).as_ref().to_vec()),
        }
    }

    /// A signature of the right length that is not the message's: RSA, random
    /// bytes with the top bit clear, so below any 2048-bit-or-longer modulus
    /// (a value at or above it would be refused before the RSA operation);
    /// Ed25519, the real signature with one bit of R flipped (R is compared, not
    /// decoded, at the end of verification, so all of it runs).
    fn wrong_signature(&self, message: &[u8], random: &mut SplitMix) -> Result<Vec<u8>, Failed> {
        match self {
            Self::Rsa(key) => {
                let mut signature = random.bytes(key.public_modulus_len());
                signature[0] &= 0x7f;
                Ok(signature)
            }
            Self::Ed25519(_) => {
                let mut signature = self.sign(message)?;
                signature[0] ^= 0x01;
                Ok(signature)
            }
        }
    }
}

/// A fast pseudo-random source for token contents (uniqueness comes from the
/// counter in each token, not from this).
struct SplitMix(u64);

impl SplitMix {
    fn new() -> Self {
        Self(Uuid::new_v4().as_u64_pair().0)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// `len` characters of the base64url alphabet.
    fn base64url_chars(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..len)
            .map(|_| char::from(ALPHABET[(self.next() % 64) as usize]))
            .collect()
    }
}

/// `count` tokens of `spec`, one per line, made on every core.
fn generate_tokens(spec: &TokenSpec, count: usize) -> Result<String, Failed> {
    // A batch id and the token's number make each `jti` (and each garbage token)
    // unique, also across files.
    let batch = Uuid::new_v4().simple().to_string();
    let now = jsonwebtoken::get_current_timestamp();
    let key = match &spec.kind {
        TokenKind::Signed { alg, .. } => {
            let pem = spec.key.as_deref().ok_or("--key is required")?;
            Some(SigningKey::from_pem(*alg, pem)?)
        }
        TokenKind::Garbage => None,
    };
    let workers = threads().min(count.max(1));
    let per_worker = count.div_ceil(workers);
    let parts: Vec<Result<String, Failed>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let range = (worker * per_worker)..((worker + 1) * per_worker).min(count);
                let (key, batch) = (key.as_ref(), batch.as_str());
                scope.spawn(move || -> Result<String, Failed> {
                    let mut random = SplitMix::new();
                    let mut out = String::new();
                    for n in range {
                        let token = match (&spec.kind, key) {
                            (TokenKind::Garbage, _) => garbage_token(&mut random, batch, n),
                            (
                                TokenKind::Signed {
                                    alg,
                                    kid,
                                    bad_signature,
                                },
                                Some(key),
                            ) => {
                                let claims = serde_json::json!({
                                    "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{n}"),
                                    "client_id": spec.client_of(n), "scope": "openid composition:read",
                                    "iat": now, "exp": now + TOKEN_LIFETIME.as_secs(),
                                    "jti": format!("{batch}-{n}"),
                                });
                                signed_token(*alg, kid, &claims, key, *bad_signature, &mut random)?
                            }
                            (TokenKind::Signed { .. }, None) => return Err("no key".into()),
                        };
                        out.push_str(&token);
                        out.push('\n');
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("a worker panicked".into()))
            })
            .collect()
    });
    let mut text = String::new();
    for part in parts {
        text.push_str(&part?);
    }
    Ok(text)
}

fn signed_token(
    alg: Alg,
    kid: &str,
    claims: &serde_json::Value,
    key: &SigningKey,
    bad_signature: bool,
    random: &mut SplitMix,
) -> Result<String, Failed> {
    let header = serde_json::json!({"typ": "JWT", "alg": alg.header_name(), "kid": kid});
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
    );
    let signature = if bad_signature {
        key.wrong_signature(message.as_bytes(), random)?
    } else {
        key.sign(message.as_bytes())?
    };
    Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// µs per item of `work` over `items`, the best of three passes.
fn per_item<T>(items: &[T], mut work: impl FnMut(&T)) -> f64 {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            items.iter().for_each(&mut work);
            started.elapsed().as_secs_f64() * 1e6 / items.len().max(1) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn verify_cost(fixtures: &Path, count: usize) -> Result<(), Failed> {
    use compositions_jobs::{JwtVerifier, KeySet, Keys, Policy};
    let policy = Policy {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        leeway: 30,
    };
    let jwks = std::fs::read(fixtures.join("jwks.json"))?;
    let keys = Arc::new(Keys::new(Duration::from_secs(3600)));
    keys.install(KeySet::parse(&jwks, "jwks.json")?);
    let verifier = JwtVerifier::new(Arc::clone(&keys), policy, 0);
    let mut line = serde_json::Map::new();
    for (alg, file) in [
        (Alg::Rs256, "rsa-test-key.pem"),
        (Alg::Eddsa, "ed25519-test-key.pem"),
    ] {
        let spec = TokenSpec {
            key: Some(std::fs::read(fixtures.join(file))?),
            client_id: "mis-bench".into(),
            numbered_clients: false,
            kind: TokenKind::Signed {
                alg,
                kid: alg.default_kid().into(),
                bad_signature: false,
            },
        };
        let tokens: Vec<String> = generate_tokens(&spec, count)?
            .lines()
            .map(str::to_owned)
            .collect();
        let current = keys.current().ok_or("no keys")?;
        let key = current.set.get(alg.default_kid()).ok_or("no such kid")?;
        let service = per_item(&tokens, |token| {
            assert!(verifier.verify(token.as_bytes()).is_ok());
        });
        let signature = per_item(&tokens, |token| {
            let (message, signature) = token.rsplit_once('.').unwrap_or_default();
            let signature = URL_SAFE_NO_PAD.decode(signature).unwrap_or_default();
            assert!(key.verify(message.as_bytes(), &signature));
        });
        let name = alg.header_name();
        line.insert(format!("{name}_verifier_us"), service.into());
        line.insert(format!("{name}_signature_us"), signature.into());
    }
    println!("{}", serde_json::Value::Object(line));
    Ok(())
}

/// Not a JWT, though shaped like one and about as long as an RS256 token of this
/// tool (some 700 characters): a 61-character first part (61 = 1 mod 4, a length
/// no base64 decodes, so the header is refused before any JSON is read), then the
/// batch id, the token's number and random characters, then 342 random ones.
fn garbage_token(random: &mut SplitMix, batch: &str, n: usize) -> String {
    format!(
        "{}.{batch}{n:x}{}.{}",
        random.base64url_chars(61),
        random.base64url_chars(256),
        random.base64url_chars(342)
    )
}

async fn open(database: &str) -> Result<Store, Failed> {
    let config = Config {
        database: database.parse()?,
        jobs: JobsConfig {
            ttl: TTL,
            ..JobsConfig::default()
        },
        ..Config::default()
    };
    Ok(Store::open(&config, Access::ReadWrite).await?)
}

async fn seed(database: &str, client_id: &str, count: usize, pending: bool) -> Result<(), Failed> {
    let store = open(database).await?;
    for n in 0..count {
        let new = NewJob {
            id: Uuid::new_v4(),
            client_id: client_id.into(),
            kind: Kind::Create,
            expected_duration: Duration::from_secs(24 * 3600),
            dedup_hash: None,
        };
        let id = store.create(new, Timestamp::now()).await?.job.id;
        match (pending, n % 3) {
            (true, _) | (false, 0) => {}
            (false, 1) => {
                store.finish(id, done()?, Timestamp::now()).await?;
            }
            _ => {
                store.finish(id, failed()?, Timestamp::now()).await?;
            }
        }
        println!("{id}");
    }
    Ok(())
}

/// Sends one GET and reads the whole answer; the connection stays open.
async fn get(stream: &mut TcpStream, path: &str, headers: &str) -> Result<u16, Failed> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n").as_bytes())
        .await?;
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err("the server closed the connection".into());
        }
        received.extend_from_slice(&buffer[..read]);
        let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(Ok(0), |value| value.trim().parse())?;
        if received.len() >= end + 4 + length {
            return Ok(head.get(9..12).unwrap_or("0").parse()?);
        }
    }
}

async fn idle(address: SocketAddr, connections: usize, hold: Duration) -> Result<(), Failed> {
    let mut open = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut stream = TcpStream::connect(address).await?;
        get(&mut stream, "/nothing-here", "").await?;
        open.push(stream);
    }
    println!("open={}", open.len());
    tokio::time::sleep(hold).await;
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn longpoll(
    address: Option<SocketAddr>,
    database: &str,
    jobs: &PathBuf,
    per_job: usize,
    token: &str,
    server_pid: Option<u32>,
    jwks: Option<PathBuf>,
) -> Result<(), Failed> {
    let ids: Vec<Uuid> = std::fs::read_to_string(jobs)?
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // Another process finishes the jobs through its own store, or this process
    // through the server's.
    let (address, store, _server) = match address {
        Some(address) => (address, open(database).await?, None),
        None => {
            let mut config = Config {
                database: database.parse()?,
                admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..Config::default()
            };
            config.auth.jwks = jwks;
            config.auth.issuer = Some(ISSUER.into());
            config.auth.audience = Some(AUDIENCE.into());
            config.polling.limit_per_second = 0.0;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let server = compositions_jobs::start_server(config.validated()?, listener).await?;
            (server.local_addr(), server.store().clone(), Some(server))
        }
    };

    let waiters = ids.len() * per_job;
    let ready = Arc::new(Barrier::new(waiters + 1));
    let headers = format!("Authorization: Bearer {token}\r\nPrefer: wait=60\r\n");
    let mut tasks = Vec::with_capacity(waiters);
    for id in &ids {
        for _ in 0..per_job {
            let (ready, headers, path) = (
                ready.clone(),
                headers.clone(),
                format!("/api/patients/composition/job/{id}"),
            );
            tasks.push(tokio::spawn(async move {
                let mut stream = TcpStream::connect(address).await?;
                ready.wait().await;
                let status = get(&mut stream, &path, &headers).await?;
                Ok::<_, Failed>((status, Instant::now()))
            }));
        }
    }
    ready.wait().await;
    // Let every request reach the server and start waiting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = server_pid
        .or_else(|| Some(std::process::id()))
        .and_then(rss_kib);

    let mut finished = Vec::with_capacity(ids.len());
    for id in &ids {
        let outcome = done()?;
        let at = Instant::now();
        store.finish(*id, outcome, Timestamp::now()).await?;
        finished.push(at);
        // Spread the transitions, as producers would.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut latencies = Vec::with_capacity(waiters);
    let mut errors = 0;
    for (n, task) in tasks.into_iter().enumerate() {
        match task.await? {
            Ok((200, answered)) => {
                latencies.push(answered.saturating_duration_since(finished[n / per_job]))
            }
            _ => errors += 1,
        }
    }
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "waiters={waiters} rss_kib={} wake_p50_ms={:.1} wake_p99_ms={:.1} wake_max_ms={:.1} errors={errors}",
        rss.unwrap_or(0),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
    Ok(())
}

/// DONE with a link to a new composition, as a producer finishes a job.
fn done() -> Result<Outcome, Failed> {
    let link = Link::new(
        "eHealth/resources",
        format!("composition/{}", Uuid::new_v4()),
    )?;
    Ok(Outcome::Done(vec![link]))
}

/// FAILED as eHealth refuses a second final composition for an encounter.
fn failed() -> Result<Outcome, Failed> {
    Ok(Outcome::Failed(Failure::new(
        1127,
        "FINAL_COMPOSITION_FOR_ENCOUNTER_ALREADY_EXISTS",
        "Already exists",
    )?))
}
