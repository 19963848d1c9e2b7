//! Scores the PDF text extractor against poppler's `pdftotext` output.
//!
//!     cargo run --release --example extract_eval -- <pdf dir> <reference dir>
//!
//! For each `NAME.pdf` with a `NAME.raw.txt` reference (pages separated by form feeds), both
//! sides are normalised the same way (NFKC, no bidi controls, whitespace collapsed) and compared
//! page by page; the score is 2·LCS/(|a|+|b|) over characters, summed over the pages.

use std::{collections::HashMap, path::Path, time::Instant};

use docuchat::{
    ingestion::pdf::{Limits, extract},
    text::for_comparison,
};

/// Length of the longest common subsequence of `a` and `b` (bit-parallel, Hyyrö 2004).
fn lcs(a: &[char], b: &[char]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let words = b.len().div_ceil(64);
    let mut masks: HashMap<char, Vec<u64>> = HashMap::new();
    for (i, c) in b.iter().enumerate() {
        masks.entry(*c).or_insert_with(|| vec![0; words])[i / 64] |= 1 << (i % 64);
    }
    let zero = vec![0u64; words];
    let mut v = vec![u64::MAX; words];
    for c in a {
        let m = masks.get(c).unwrap_or(&zero);
        let mut carry = 0u64;
        let mut borrow = 0u64;
        for k in 0..words {
            let u = v[k] & m[k];
            let (s1, c1) = v[k].overflowing_add(u);
            let (sum, c2) = s1.overflowing_add(carry);
            carry = u64::from(c1 || c2);
            let (d1, b1) = v[k].overflowing_sub(u);
            let (diff, b2) = d1.overflowing_sub(borrow);
            borrow = u64::from(b1 || b2);
            v[k] = sum | diff;
        }
    }
    let mut zeros = 0;
    for (k, word) in v.iter().enumerate() {
        let bits = if k == words - 1 && !b.len().is_multiple_of(64) { b.len() % 64 } else { 64 };
        let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
        zeros += (!word & mask).count_ones() as usize;
    }
    zeros
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (pdf_dir, ref_dir) = match args.as_slice() {
        [p, r] => (Path::new(p).to_owned(), Path::new(r).to_owned()),
        _ => {
            eprintln!("usage: extract_eval <pdf dir> <reference dir>");
            std::process::exit(2);
        }
    };
    let mut names: Vec<String> = std::fs::read_dir(&pdf_dir)
        .expect("pdf dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".pdf"))
        .collect();
    names.sort();
    let limits = Limits { max_pages: 10_000, ..Limits::default() };
    println!("| file | pages | ms | ms/page | score |");
    println!("|---|---:|---:|---:|---:|");
    let mut scores = Vec::new();
    for name in names {
        let stem = name.trim_end_matches(".pdf");
        let Ok(reference) = std::fs::read_to_string(ref_dir.join(format!("{stem}.raw.txt"))) else { continue };
        let bytes = std::fs::read(pdf_dir.join(&name)).expect("read pdf");
        let start = Instant::now();
        let result = extract(&bytes, &limits, |_| {});
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let ref_pages: Vec<Vec<char>> = reference.split('\u{c}').map(|p| for_comparison(p).chars().collect()).collect();
        // poppler writes unmapped glyphs as control characters: those are not text
        let ref_chars: usize = ref_pages.iter().map(|p| p.iter().filter(|c| !c.is_control()).count()).sum();
        match result {
            Ok(pages) => {
                let (mut common, mut total) = (0usize, 0usize);
                for (i, page) in pages.iter().enumerate() {
                    let ours: Vec<char> = for_comparison(&page.text).chars().collect();
                    let theirs = ref_pages.get(i).cloned().unwrap_or_default();
                    common += lcs(&ours, &theirs);
                    total += ours.len() + theirs.len();
                }
                let score = if total == 0 { 1.0 } else { 2.0 * common as f64 / total as f64 };
                if ref_chars > 0 {
                    scores.push(score);
                }
                println!(
                    "| {name} | {} | {ms:.0} | {:.2} | {score:.4}{} |",
                    pages.len(),
                    ms / pages.len().max(1) as f64,
                    if ref_chars == 0 { " (no reference text)" } else { "" }
                );
            }
            Err(e) => println!(
                "| {name} | - | {ms:.0} | - | {} ({}) |",
                e.code(),
                if ref_chars == 0 { "poppler: no text either" } else { "poppler has text" }
            ),
        }
    }
    let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
    println!("\nmean score over {} files with reference text: {mean:.4}", scores.len());
}

#[cfg(test)]
mod tests {
    #[test]
    fn lcs_matches_the_textbook_cases() {
        let c = |s: &str| s.chars().collect::<Vec<_>>();
        assert_eq!(super::lcs(&c("ABCBDAB"), &c("BDCABA")), 4);
        assert_eq!(super::lcs(&c("same"), &c("same")), 4);
        assert_eq!(super::lcs(&c("abc"), &c("xyz")), 0);
        let long_a: String = "abcdefghij".repeat(50);
        let long_b: String = "abcdefghij".repeat(50);
        assert_eq!(super::lcs(&c(&long_a), &c(&long_b)), 500);
    }
}
