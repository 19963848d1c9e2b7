//! Synthetic embeddings for the retrieval benchmark, and the statistics that compare them with
//! real ones (see `embedding_stats`).
//!
//! Two models of a tenant's vectors, each around 20 topics of its own:
//! - `manifold` (the default): a topic centre plus an offset within that topic's own
//!   16-dimensional subspace plus a little noise in every direction, the centres sharing a
//!   direction (a tenant's documents have something in common). Real sentence embeddings lie
//!   near such low-dimensional structure; the constants were chosen so that the neighbour
//!   statistics come out close to all-MiniLM-L6-v2 vectors of real manuals.
//! - `isotropic`: a topic centre plus noise of the same size in all 384 directions. Every point of
//!   a topic is then about equally far from every other: the hardest case for a graph index,
//!   harder than real text.
//!
//! Included with `#[path = "support/vectors.rs"] mod vectors;`; each program uses a part of it.
#![allow(dead_code)]

/// A small deterministic generator (the same data on every run).
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in [-0.5, 0.5).
    pub fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// About normal, mean 0, standard deviation 1/√2.
    pub fn gaussian(&mut self) -> f32 {
        (0..6).map(|_| self.next()).sum::<f32>()
    }

    fn gaussian_vec(&mut self, dims: usize) -> Vec<f32> {
        (0..dims).map(|_| self.gaussian()).collect()
    }
}

pub fn unit(mut v: Vec<f32>) -> Vec<f32> {
    docuchat::embed::to_unit_length(&mut v);
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    Manifold,
    Isotropic,
}

impl Model {
    /// `VECTORS=isotropic` picks the hard model; the default is `manifold`.
    pub fn from_env() -> Self {
        match std::env::var("VECTORS").as_deref() {
            Ok("isotropic") => Model::Isotropic,
            _ => Model::Manifold,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Model::Manifold => "manifold",
            Model::Isotropic => "isotropic",
        }
    }
}

pub const TOPICS: usize = 20;
const SUBSPACE: usize = 16;
const SPREAD: f32 = 0.3;
const NOISE: f32 = 0.045;
const SHARED: f32 = 0.7;

/// One tenant's topics.
pub struct Tenant {
    model: Model,
    centres: Vec<Vec<f32>>,
    /// per topic, `SUBSPACE` directions of its own (manifold model only)
    bases: Vec<Vec<Vec<f32>>>,
}

impl Tenant {
    pub fn new(rng: &mut Rng, model: Model, dims: usize) -> Self {
        match model {
            Model::Isotropic => Tenant {
                model,
                centres: (0..TOPICS).map(|_| unit(rng.gaussian_vec(dims))).collect(),
                bases: Vec::new(),
            },
            Model::Manifold => {
                let shared = unit(rng.gaussian_vec(dims));
                let centres = (0..TOPICS)
                    .map(|_| {
                        let own = unit(rng.gaussian_vec(dims));
                        unit(shared.iter().zip(own).map(|(s, o)| SHARED * s + o).collect())
                    })
                    .collect();
                let bases =
                    (0..TOPICS).map(|_| (0..SUBSPACE).map(|_| unit(rng.gaussian_vec(dims))).collect()).collect();
                Tenant { model, centres, bases }
            }
        }
    }

    /// A text about `topic`: a chunk, or a question about it.
    pub fn sample(&self, rng: &mut Rng, topic: usize) -> Vec<f32> {
        let centre = &self.centres[topic % TOPICS];
        match self.model {
            Model::Isotropic => unit(centre.iter().map(|x| x + 0.08 * rng.gaussian()).collect()),
            Model::Manifold => {
                let mut v = centre.clone();
                for direction in &self.bases[topic % TOPICS] {
                    let z = SPREAD * std::f32::consts::SQRT_2 * rng.gaussian();
                    for (x, d) in v.iter_mut().zip(direction) {
                        *x += z * d;
                    }
                }
                for x in v.iter_mut() {
                    *x += NOISE * rng.gaussian();
                }
                unit(v)
            }
        }
    }
}

/// Neighbour statistics of a set of unit vectors: how far apart texts are, and how clearly a
/// text's ten nearest stand out from the rest (what decides how hard approximate search is).
pub struct Stats {
    pub n: usize,
    pub mean_pair: f64,
    pub nearest_p50: f64,
    pub tenth_p50: f64,
    /// the 10th nearest's similarity minus the 11th's
    pub gap_p50: f64,
}

pub fn stats(vectors: &[Vec<f32>]) -> Stats {
    let n = vectors.len();
    let (mut pair_sum, mut pairs) = (0f64, 0usize);
    let (mut nearest, mut tenth, mut gap) = (Vec::new(), Vec::new(), Vec::new());
    for (i, a) in vectors.iter().enumerate() {
        let mut sims: Vec<f64> = Vec::with_capacity(n);
        for (j, b) in vectors.iter().enumerate() {
            if i != j {
                let s = a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() as f64;
                sims.push(s);
                if j > i {
                    pair_sum += s;
                    pairs += 1;
                }
            }
        }
        sims.sort_by(|x, y| y.total_cmp(x));
        if sims.len() >= 11 {
            nearest.push(sims[0]);
            tenth.push(sims[9]);
            gap.push(sims[9] - sims[10]);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    Stats {
        n,
        mean_pair: pair_sum / pairs.max(1) as f64,
        nearest_p50: median(nearest),
        tenth_p50: median(tenth),
        gap_p50: median(gap),
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} vectors: mean pair cosine {:.3}, nearest p50 {:.3}, 10th nearest p50 {:.3}, 10th−11th gap p50 {:.4}",
            self.n, self.mean_pair, self.nearest_p50, self.tenth_p50, self.gap_p50
        )
    }
}
