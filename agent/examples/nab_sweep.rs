//! Tuning and robustness harness for the general detector on a labelled NAB corpus.
//!
//!     cargo run --release -p fieldline-agent --example nab_sweep -- \
//!         --data ../shared/data/nab-dev [KEY=V1,V2,...]... [--pm20]
//!
//! Streams every series through [`GeneralDetector`] in memory and scores the result with a
//! port of `../shared/tools/nab_score.py` (same probation, window weights, profiles and
//! corpus-wide threshold sweep; it agrees with the Python scorer to the printed digits), so
//! one configuration takes well under a second instead of a file round trip.
//!
//! `KEY=V1,V2` overrides a [`GeneralConfig`] field; several keys run their cartesian
//! product. `--pm20` instead moves every numeric parameter of the (overridden) default by
//! -20% and +20%, one at a time, and prints the standard score of each: the robustness
//! check reported in docs/BENCHMARKS.md.
//!
//! `--jitter` reports the mean and worst standard score over `bins_per_unit` x 0.96-1.04
//! (the expected score under a random placement of the bin edges, which is what decides a
//! held-out score); `--search` runs a greedy coordinate ascent on that mean. `--only
//! CAT1,CAT2` keeps the series whose path starts with one of the prefixes (the held-out
//! check on halves of dev), `--threshold T` scores at a threshold carried over from the
//! other half, and `--detail` prints each series' first detection per window (as a
//! fraction of the window width) and its false-positive rows. `--dump FILE` writes, per
//! series, a hash of every score, rarity and firing test (bit patterns) for the first
//! configuration, and the detector's state size at the end (in memory and as saved in a
//! checkpoint): two builds that must agree bit for bit (a speed-up) give equal hashes.
//!
//! Tune only on the dev half: the held-out half means something only if nobody tuned on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fieldline_agent::detect::nab::{list_corpus, parse_timestamp_ms, read_series};
use fieldline_agent::detect::{Detector, GeneralConfig, GeneralDetector};

/// (name, A_TP, A_FP, A_FN) as in NAB's profiles.json.
const PROFILES: [(&str, f64, f64, f64); 3] = [
    ("standard", 1.0, 0.11, 1.0),
    ("reward_low_FP_rate", 1.0, 0.22, 1.0),
    ("reward_low_FN_rate", 1.0, 0.11, 2.0),
];

struct Series {
    rel: String,
    ts: Vec<i64>,
    values: Vec<f64>,
    /// Label windows as inclusive row ranges.
    windows: Vec<(usize, usize)>,
}

/// One scorable row: anomaly score, the window it lies in (global index), and its weight:
/// the TP credit inside a window, the (negative) FP cost outside.
struct Point {
    score: f64,
    window: Option<usize>,
    weight: f64,
}

struct ProfileScore {
    score: f64,
    threshold: f64,
    hit: usize,
    fp: usize,
}

fn main() -> Result<()> {
    let mut data: Option<PathBuf> = None;
    let mut pm20 = false;
    let mut detail = false;
    let mut jitter = false;
    let mut search = false;
    let mut only: Vec<String> = Vec::new();
    let mut fixed: Option<f64> = None;
    let mut dump: Option<PathBuf> = None;
    let mut grid: Vec<(String, Vec<f64>)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data" => data = Some(args.next().context("--data needs a directory")?.into()),
            "--pm20" => pm20 = true,
            "--detail" => detail = true,
            "--jitter" => jitter = true,
            "--search" => search = true,
            "--dump" => dump = Some(args.next().context("--dump needs a file")?.into()),
            "--only" => {
                only = args
                    .next()
                    .context("--only needs comma-separated category prefixes")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--threshold" => {
                let t = args.next().context("--threshold needs a number")?;
                fixed = Some(t.parse().with_context(|| format!("bad threshold `{t}`"))?);
            }
            _ => {
                let (k, vs) = a
                    .split_once('=')
                    .with_context(|| format!("expected KEY=V1,V2,..., got `{a}`"))?;
                let vs = vs
                    .split(',')
                    .map(|v| {
                        v.parse::<f64>()
                            .with_context(|| format!("{k}: bad value `{v}`"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                GeneralConfig::default()
                    .set(k, vs[0])
                    .map_err(anyhow::Error::msg)?;
                grid.push((k.to_string(), vs));
            }
        }
    }
    let data = data.context("--data DIR is required")?;
    let mut corpus = load(&data)?;
    if !only.is_empty() {
        corpus.retain(|s| only.iter().any(|p| s.rel.starts_with(p.as_str())));
    }
    let windows: usize = corpus.iter().map(|s| s.windows.len()).sum();
    println!("{} series, {windows} windows", corpus.len());

    let combos: usize = grid.iter().map(|(_, vs)| vs.len()).product();
    for i in 0..combos {
        let (mut cfg, mut label, mut rest) = (GeneralConfig::default(), String::new(), i);
        for (k, vs) in &grid {
            let v = vs[rest % vs.len()];
            rest /= vs.len();
            cfg.set(k, v).map_err(anyhow::Error::msg)?;
            label += &format!("{k}={v} ");
        }
        cfg.validate().map_err(anyhow::Error::msg)?;
        if let Some(path) = dump.take() {
            write_dump(&corpus, &cfg, &path)?;
        }
        if detail {
            let s = evaluate(&corpus, &cfg);
            print_detail(&corpus, &cfg, s[0].threshold);
        }
        if let Some(t) = fixed {
            let s = evaluate_at(&corpus, &cfg, Some(t));
            println!(
                "{label}at threshold {t}: standard {:.2} ({}/{windows} windows, {} FP rows) \
                 low_FP {:.2} low_FN {:.2}",
                s[0].score, s[0].hit, s[0].fp, s[1].score, s[2].score
            );
        } else if search {
            coordinate_search(&corpus, cfg)?;
        } else if jitter {
            let (mean, worst) = jittered(&corpus, &cfg);
            println!("{label}jittered standard mean {mean:.2} worst {worst:.2}");
        } else if pm20 {
            robustness(&corpus, &cfg, &label)?;
        } else {
            let s = evaluate(&corpus, &cfg);
            println!(
                "{label}standard {:.2} (threshold {:.4}, {}/{windows} windows, {} FP rows) \
                 low_FP {:.2} low_FN {:.2}",
                s[0].score, s[0].threshold, s[0].hit, s[0].fp, s[1].score, s[2].score
            );
        }
    }
    Ok(())
}

/// Bin-width multipliers of the jittered score: a 2-4% change of `bins_per_unit` moves
/// every bin edge by a fraction of a bin over most of the range, so the mean over them is
/// the expected score under a random placement of the edges.
const JITTER: [f64; 5] = [0.96, 0.98, 1.0, 1.02, 1.04];

/// Mean and worst standard score over the bin-width jitter.
fn jittered(corpus: &[Series], cfg: &GeneralConfig) -> (f64, f64) {
    let (mut sum, mut worst) = (0.0, f64::INFINITY);
    for f in JITTER {
        let mut c = cfg.clone();
        c.bins_per_unit *= f;
        let s = evaluate(corpus, &c)[0].score;
        sum += s;
        worst = worst.min(s);
    }
    (sum / JITTER.len() as f64, worst)
}

/// Greedy coordinate ascent on the jittered mean: tuning on the expected score under
/// random bin edges instead of on one lucky placement. Prints every accepted move.
fn coordinate_search(corpus: &[Series], mut cfg: GeneralConfig) -> Result<()> {
    let (mut best, _) = jittered(corpus, &cfg);
    println!("start: jittered mean {best:.2}");
    for pass in 0..2 {
        let mut moved = false;
        for &k in PARAMS {
            if k == "bins_per_unit" {
                continue;
            }
            let v = cfg.get(k).unwrap_or(f64::NAN);
            for f in [0.7, 0.85, 1.18, 1.4] {
                let mut c = cfg.clone();
                c.set(k, v * f).map_err(anyhow::Error::msg)?;
                if c.validate().is_err() || c.get(k).unwrap_or(f64::NAN) == v {
                    continue;
                }
                let (m, w) = jittered(corpus, &c);
                if m > best + 0.2 {
                    println!(
                        "pass {pass}: {k} {v} -> {}: jittered mean {m:.2} (worst {w:.2})",
                        c.get(k).unwrap_or(f64::NAN)
                    );
                    best = m;
                    cfg = c;
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    println!("final: {cfg:?}");
    let s = evaluate(corpus, &cfg);
    println!(
        "final: jittered mean {best:.2}; standard {:.2} low_FP {:.2} low_FN {:.2}",
        s[0].score, s[1].score, s[2].score
    );
    Ok(())
}

/// Standard score with each numeric parameter moved by -20% and +20%, one at a time.
fn robustness(corpus: &[Series], cfg: &GeneralConfig, label: &str) -> Result<()> {
    let base = evaluate(corpus, cfg)[0].score;
    println!("{label}standard {base:.2}; each parameter at -20% / +20%:");
    let (mut sum, mut n, mut worst) = (0.0, 0, f64::INFINITY);
    for &k in PARAMS {
        let v = cfg.get(k).unwrap_or(f64::NAN);
        let mut row = format!("  {k:<18} {v:>8}:");
        for f in [0.8, 1.2] {
            let mut c = cfg.clone();
            c.set(k, v * f).map_err(anyhow::Error::msg)?;
            let s = match c.validate() {
                Ok(()) => evaluate(corpus, &c)[0].score,
                Err(_) => f64::NAN,
            };
            row += &format!(" {s:7.2}");
            // The alert level is the detector's threshold: NAB re-optimises it per detector,
            // so its move is reported but kept out of the summary.
            if k != "alert_nats" && s.is_finite() {
                sum += s;
                n += 1;
                worst = worst.min(s);
            }
        }
        println!("{row}");
    }
    println!(
        "  mean {:.2}, worst {worst:.2} over {n} moves (alert_nats excluded)",
        sum / n as f64
    );
    Ok(())
}

fn evaluate(corpus: &[Series], cfg: &GeneralConfig) -> Vec<ProfileScore> {
    evaluate_at(corpus, cfg, None)
}

/// Scores per profile at the optimal threshold, or at `fixed` (a threshold carried over
/// from another corpus, as in a held-out check).
fn evaluate_at(corpus: &[Series], cfg: &GeneralConfig, fixed: Option<f64>) -> Vec<ProfileScore> {
    let mut points = Vec::new();
    let mut base = 0;
    for s in corpus {
        let mut det = GeneralDetector::new(cfg.clone());
        let scores: Vec<f64> =
            s.ts.iter()
                .zip(&s.values)
                .map(|(&t, &v)| det.update(t, v))
                .collect();
        push_points(s, &scores, base, &mut points);
        base += s.windows.len();
    }
    points.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut scored = vec![false; base];
    for p in &points {
        if let Some(w) = p.window {
            scored[w] = true;
        }
    }
    let n_win = scored.iter().filter(|&&b| b).count() as f64;
    PROFILES
        .iter()
        .map(|&(_, a_tp, a_fp, a_fn)| sweep(&points, base, n_win, [a_tp, a_fp, a_fn], fixed))
        .collect()
}

/// Per series at `threshold`: each window's first detection (rows after the window start,
/// as a fraction of its width; "miss" if none) and the false-positive rows after probation,
/// each tagged with the test that fired: `P<view>` a point rarity, `L<view>` a likelihood.
fn print_detail(corpus: &[Series], cfg: &GeneralConfig, threshold: f64) {
    for s in corpus {
        let mut det = GeneralDetector::new(cfg.clone());
        let mut why = Vec::with_capacity(s.values.len());
        let scores: Vec<f64> =
            s.ts.iter()
                .zip(&s.values)
                .map(|(&t, &v)| {
                    let score = det.update(t, v);
                    let (view, sustained) = det.last_view();
                    why.push(format!("{}{view}", if sustained { "L" } else { "P" }));
                    score
                })
                .collect();
        let n = scores.len();
        let probation = ((0.15 * n as f64).floor() as usize).min(750);
        let inside = |i: usize| s.windows.iter().any(|&(a, b)| (a..=b).contains(&i));
        let fps: Vec<usize> = (probation..n)
            .filter(|&i| scores[i] >= threshold && !inside(i))
            .collect();
        let hits: Vec<String> = s
            .windows
            .iter()
            .map(|&(a, b)| match (a..=b).find(|&i| scores[i] >= threshold) {
                Some(i) => format!("{:.2}:{}", (i - a) as f64 / (b - a + 1) as f64, why[i]),
                None => "miss".to_string(),
            })
            .collect();
        let fps: Vec<String> = fps.iter().map(|&i| format!("{i}:{}", why[i])).collect();
        println!(
            "  {:<55} n={n:<6} windows [{}] FP {} at [{}]",
            s.rel,
            hits.join(" "),
            fps.len(),
            fps.join(" ")
        );
    }
}

/// Per series: FNV-1a over the bit patterns of every score, last rarity and last view.
fn write_dump(corpus: &[Series], cfg: &GeneralConfig, path: &Path) -> Result<()> {
    let mut out = String::new();
    for s in corpus {
        let mut det = GeneralDetector::new(cfg.clone());
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (&t, &v) in s.ts.iter().zip(&s.values) {
            eat(det.update(t, v).to_bits());
            eat(det.last_rarity().to_bits());
            let (view, sustained) = det.last_view();
            eat(view as u64 * 2 + u64::from(sustained));
        }
        let mut state = Vec::new();
        det.save_state(&mut fieldline_agent::detect::StateWriter(&mut state));
        out += &format!(
            "{} {h:016x} state {} B in memory, {} B saved\n",
            s.rel,
            det.state_bytes(),
            state.len()
        );
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))?;
    println!("dump: {} series -> {}", corpus.len(), path.display());
    Ok(())
}

/// NAB's threshold optimisation: lower the threshold through every distinct score and keep
/// the best raw total (ties go to the higher threshold).
fn sweep(
    points: &[Point],
    n_keys: usize,
    n_win: f64,
    [a_tp, a_fp, a_fn]: [f64; 3],
    fixed: Option<f64>,
) -> ProfileScore {
    let mut best_credit: Vec<Option<f64>> = vec![None; n_keys];
    let mut total = -a_fn * n_win;
    let (mut hit, mut fp) = (0, 0);
    let mut best = (total, f64::INFINITY, 0, 0);
    let mut i = 0;
    while i < points.len() {
        let t = points[i].score;
        while i < points.len() && points[i].score == t {
            let p = &points[i];
            match p.window {
                None => {
                    fp += 1;
                    total += a_fp * p.weight;
                }
                Some(w) => {
                    let v = a_tp * p.weight;
                    match best_credit[w] {
                        None => {
                            total += v + a_fn;
                            best_credit[w] = Some(v);
                            hit += 1;
                        }
                        Some(cur) if v > cur => {
                            total += v - cur;
                            best_credit[w] = Some(v);
                        }
                        Some(_) => {}
                    }
                }
            }
            i += 1;
        }
        match fixed {
            None if total > best.0 => best = (total, t, hit, fp),
            // Every score at or above the carried-over threshold counts, nothing below.
            Some(f) if t >= f => best = (total, f, hit, fp),
            _ => {}
        }
    }
    let (null, perfect) = (-a_fn * n_win, a_tp * n_win);
    ProfileScore {
        score: 100.0 * (best.0 - null) / (perfect - null),
        threshold: best.1,
        hit: best.2,
        fp: best.3,
    }
}

/// NAB's scaled sigmoid.
fn sigma(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

fn push_points(s: &Series, scores: &[f64], base: usize, out: &mut Vec<Point>) {
    let n = scores.len();
    let probation = ((0.15 * n as f64).floor() as usize).min(750);
    let mut window_of = vec![None; n];
    for (w, &(a, b)) in s.windows.iter().enumerate() {
        for slot in &mut window_of[a..=b] {
            *slot = Some(w);
        }
    }
    let mut prev: Option<(usize, usize)> = None; // (end, width) of the last window passed
    for (i, &score) in scores.iter().enumerate() {
        let (window, weight) = match window_of[i] {
            Some(w) => {
                let (a, e) = s.windows[w];
                let width = (e - a + 1) as f64;
                (
                    Some(base + w),
                    sigma(-((e - i + 1) as f64) / width) / sigma(-1.0),
                )
            }
            None => match prev {
                None => (None, -1.0),
                Some((end, width)) => (None, sigma((i - end) as f64 / (width as f64 - 1.0))),
            },
        };
        if i >= probation {
            out.push(Point {
                score,
                window,
                weight,
            });
        }
        if let Some(w) = window_of[i] {
            let (a, e) = s.windows[w];
            if i == e {
                prev = Some((e, e - a + 1));
            }
        }
    }
}

fn load(data: &Path) -> Result<Vec<Series>> {
    let wpath = data.join("combined_windows.json");
    let text =
        std::fs::read_to_string(&wpath).with_context(|| format!("reading {}", wpath.display()))?;
    let labels: BTreeMap<String, Vec<[String; 2]>> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", wpath.display()))?;
    let mut out = Vec::new();
    for (cat, name) in list_corpus(data)? {
        let rel = format!("{cat}/{name}");
        // Only labelled files are part of the corpus, as in the Python scorer.
        let Some(wins) = labels.get(&rel) else {
            continue;
        };
        let rows = read_series(&data.join(&cat).join(&name))?;
        let ts: Vec<i64> = rows.iter().map(|r| r.ts_ms).collect();
        let row_of = |t: &str| -> Result<usize> {
            let ms = parse_timestamp_ms(t).with_context(|| format!("{rel}: bad window {t}"))?;
            ts.iter()
                .position(|&x| x == ms)
                .with_context(|| format!("{rel}: window bound {t} is not a data row"))
        };
        let mut windows = wins
            .iter()
            .map(|[a, b]| Ok((row_of(a)?, row_of(b)?)))
            .collect::<Result<Vec<_>>>()?;
        windows.sort_unstable();
        out.push(Series {
            rel,
            values: rows.iter().map(|r| r.value).collect(),
            ts,
            windows,
        });
    }
    if out.is_empty() {
        bail!("{}: no labelled series", data.display());
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Numeric parameters moved by `--pm20`.
const PARAMS: &[&str] = &[
    "warmup",
    "memory",
    "scale_memory",
    "bins_per_unit",
    "density_prior",
    "distance_nats",
    "short_alpha",
    "season_slots",
    "season_alpha",
    "calib_memory",
    "calib_prior",
    "tail_fraction",
    "tail_beta_min",
    "alert_nats",
    "cooldown_points",
    "likelihood_short",
    "likelihood_long",
    "novelty_prototypes",
    "novelty_radius",
    "novelty_phase",
    "novelty_scale",
    "residual_support",
    "smoothed_support",
    "run_memory",
    "run_deviation",
    "run_decrement",
    "run_scale",
];
