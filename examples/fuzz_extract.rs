//! A mutation fuzzer for the PDF reader, run the way the service runs it: in `docuchat pdf-child`
//! with the child's hard limits (here 512 MB of address space, 6 s of CPU, a 10 s wall clock).
//!
//!     cargo build --release --bin docuchat
//!     cargo run --release --example fuzz_extract -- <seconds> <seed> <pdf dir>... [--out DIR]
//!
//! Each input is a real PDF of the given directories with one to four mutations: bit flips,
//! random bytes written or inserted, ranges deleted or repeated, numbers replaced by extreme
//! values, PDF syntax inserted, a splice of another file, truncation. Prints how many inputs ran
//! and how each ended; inputs that panicked inside the reader (caught, but a bug), crashed it (a
//! signal other than the memory limit's abort) or hung it to the wall clock are written to the
//! output directory (default `target/fuzz-findings`) to become test fixtures.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const MEMORY: u64 = 512 << 20;
const CPU_SECONDS: u64 = 6;
const WALL: Duration = Duration::from_secs(10);

/// xorshift64*: reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const SYNTAX: &[&[u8]] = &[
    b"<<",
    b">>",
    b"[",
    b"]",
    b"(",
    b")",
    b" obj ",
    b" endobj ",
    b" 0 R ",
    b"stream\n",
    b"\nendstream",
    b"/Filter /FlateDecode",
    b"/Type /Page",
    b"/Kids [1 0 R]",
    b"/Length 99999999",
    b"BT",
    b"ET",
    b"Tj",
    b"TJ",
    b"Do",
    b"/W [0 [",
    b"beginbfrange <0000> <FFFF> <0041> endbfrange",
    b"xref\n0 1\n",
    b"%%EOF",
];

const EXTREMES: &[&[u8]] =
    &[b"2147483647", b"-2147483648", b"4294967296", b"99999999999999999999", b"-1", b"0", b"1e38"];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len().max(1);
        let at = rng.below(len);
        match rng.below(9) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(input.len().max(1));
                    if let Some(b) = input.get_mut(i) {
                        *b ^= 1 << rng.below(8);
                    }
                }
            }
            1 => {
                for i in at..(at + 1 + rng.below(16)).min(input.len()) {
                    input[i] = rng.next() as u8;
                }
            }
            2 => {
                let bytes: Vec<u8> = (0..1 + rng.below(32)).map(|_| rng.next() as u8).collect();
                input.splice(at.min(input.len())..at.min(input.len()), bytes);
            }
            3 => {
                let end = (at + 1 + rng.below(4096)).min(input.len());
                input.drain(at.min(end)..end);
            }
            4 => {
                let end = (at + 1 + rng.below(256)).min(input.len());
                let piece = input[at.min(end)..end].to_vec();
                for _ in 0..1 + rng.below(64) {
                    input.splice(at..at, piece.iter().copied());
                }
            }
            5 => {
                // the next number from `at` becomes an extreme one
                if let Some(start) = input[at.min(input.len())..].iter().position(u8::is_ascii_digit) {
                    let start = at + start;
                    let end = start + input[start..].iter().take_while(|b| b.is_ascii_digit()).count();
                    let value = EXTREMES[rng.below(EXTREMES.len())];
                    input.splice(start..end, value.iter().copied());
                }
            }
            6 => {
                let s = SYNTAX[rng.below(SYNTAX.len())];
                input.splice(at.min(input.len())..at.min(input.len()), s.iter().copied());
            }
            7 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let to = (from + rng.below(64 * 1024)).min(other.len());
                let cut = at.min(input.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..to]);
            }
            _ => input.truncate(rng.below(len)),
        }
    }
}

/// How one input ended, and what the reader printed on stderr.
fn run(program: &Path, input: &[u8]) -> (String, String, Duration) {
    let started = Instant::now();
    let mut command = Command::new(program);
    command
        .args(["pdf-child", "extract", "500", &(CPU_SECONDS * 1000 - 1000).to_string(), &MEMORY.to_string()])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start docuchat pdf-child (build it with --release)");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        // the last line says how it ended; the pages before it are not kept
        let mut last = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            last.extend_from_slice(&buf[..n]);
            if last.len() > 1 << 20 {
                last.drain(..last.len() - 4096);
            }
        }
        last
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > WALL {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = writer.join();
    let out = reader.join().unwrap_or_default();
    let stderr = errors.join().unwrap_or_default();
    let last = String::from_utf8_lossy(&out);
    let last = last.trim_end().rsplit('\n').next().unwrap_or("").to_owned();
    let outcome = match status {
        None => "hang".to_owned(),
        Some(s) => match s.signal() {
            Some(libc::SIGABRT) if stderr.contains("memory allocation") => "memory limit (abort)".to_owned(),
            Some(libc::SIGXCPU) => "cpu limit".to_owned(),
            Some(sig) => format!("crash: signal {sig}"),
            None if stderr.contains("panicked at") => "panic (caught)".to_owned(),
            None if last.contains("\"done\"") || last == "\"done\"" => "text".to_owned(),
            None => match serde_json::from_str::<serde_json::Value>(&last) {
                Ok(v) => format!("error: {}", v["error"]["code"].as_str().unwrap_or("?")),
                Err(_) => format!("exit {:?} without an answer", s.code()),
            },
        },
    };
    (outcome, stderr, started.elapsed())
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let out_dir = match args.iter().position(|a| a == "--out") {
        Some(i) => {
            let dir = args.remove(i + 1);
            args.remove(i);
            PathBuf::from(dir)
        }
        None => PathBuf::from(format!("{}/target/fuzz-findings", env!("CARGO_MANIFEST_DIR"))),
    };
    if args.len() < 3 {
        eprintln!("usage: fuzz_extract <seconds> <seed> <pdf dir>... [--out DIR]");
        std::process::exit(2);
    }
    let seconds: u64 = args[0].parse().expect("seconds");
    let seed: u64 = args[1].parse().expect("seed");
    let mut seeds = Vec::new();
    for dir in &args[2..] {
        for entry in std::fs::read_dir(dir).expect("pdf dir").flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pdf")
                && let Ok(bytes) = std::fs::read(&path)
                && bytes.len() <= 8 << 20
            {
                seeds.push(bytes);
            }
        }
    }
    assert!(!seeds.is_empty(), "no PDFs of at most 8 MB in {:?}", &args[2..]);
    let program = PathBuf::from(format!("{}/target/release/docuchat", env!("CARGO_MANIFEST_DIR")));
    std::fs::create_dir_all(&out_dir).expect("output dir");

    let mut rng = Rng(seed.max(1));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut panics: BTreeMap<String, usize> = BTreeMap::new();
    let (mut runs, mut slowest) = (0usize, Duration::ZERO);
    while Instant::now() < until {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &seeds, &mut input);
        let (outcome, stderr, took) = run(&program, &input);
        runs += 1;
        slowest = slowest.max(took);
        let finding = outcome == "hang" || outcome.starts_with("crash") || outcome.starts_with("panic");
        if finding {
            let place = stderr
                .lines()
                .find(|l| l.contains("panicked at"))
                .map(|l| l.split("panicked at").nth(1).unwrap_or("").trim().to_owned())
                .unwrap_or_else(|| outcome.clone());
            let n = panics.entry(place.clone()).or_default();
            *n += 1;
            if *n <= 3 {
                let name = format!("{}-{runs}.pdf", outcome.replace([' ', ':', '(', ')'], "_"));
                std::fs::write(out_dir.join(&name), &input).expect("write finding");
                eprintln!("finding {name}: {place}");
            }
        }
        *outcomes.entry(outcome).or_default() += 1;
    }
    println!(
        "{runs} inputs in {seconds} s ({:.1}/s), seed {seed}, {} seed files; slowest {slowest:.2?}",
        runs as f64 / seconds as f64,
        seeds.len()
    );
    for (outcome, n) in &outcomes {
        println!("  {n:>7}  {outcome}");
    }
    if panics.is_empty() {
        println!("no panic, crash or hang");
    } else {
        println!("findings (written to {}):", out_dir.display());
        for (place, n) in &panics {
            println!("  {n:>7}  {place}");
        }
    }
}
