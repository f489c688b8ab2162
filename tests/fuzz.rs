//! A bounded fuzz smoke over mutated inputs, run by `cargo test` (and by CI with more cases).
//!
//! Four targets: `herald.yaml` loading (with its rule files and secrets on disk), rule-file
//! loading (YAML, conditions, templates), test files (the raw format, durations and series
//! notation, then the whole `herald test` driver against the shipped pack), and `when` conditions (compiled, then evaluated with known and unknown
//! signals). Each case takes a seed from the corpus and applies a few random mutations:
//! byte edits, deletions, duplications, truncation and insertions of tokens from a dictionary,
//! repeated up to hundreds of times to build nesting storms (`((((`, `[[[[`, `not not`, …).
//!
//! The property: nothing panics, nothing overflows the stack (the test threads have the same
//! 2 MiB as tokio's blocking threads, where reloads run), and every refusal is a located
//! diagnostic. Seeds live in `tests/fuzz/corpus/<target>/`, plus the shipped rule pack, the
//! rule tests and the crash fixtures (`tests/fixtures/crash/`), which are the inputs that once
//! crashed Herald. `HERALD_FUZZ_CASES` sets the number of cases per target (default 256).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use herald::config::yaml::{self, TestFile};
use herald::config::{load_config, parse_rule_sources, PromDuration};
use herald::expr::{compile, Ctx, IncidentView, Scope};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Every file directly in the given directories (sorted), as text.
fn files(dirs: &[&str], ext: &str) -> Vec<String> {
    let mut paths: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(repo(d)).unwrap_or_else(|e| panic!("{d}: {e}")))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
}

fn rule_seeds() -> Vec<String> {
    files(&["tests/fuzz/corpus/rules", "rules", "tests/fixtures/crash"], "yaml")
}

fn config_seeds() -> Vec<String> {
    files(&["tests/fuzz/corpus/config"], "yaml")
}

/// Test files, pointed at the shipped pack copied next to them as `rules.yaml`.
fn test_seeds() -> Vec<String> {
    let rule_files = regex::Regex::new(r"(?m)^rule_files:.*$").unwrap();
    files(&["tests/fuzz/corpus/tests", "tests/rules"], "yaml").iter().map(|t| rule_files.replace(t, "rule_files: [rules.yaml]").into_owned()).collect()
}

fn when_seeds() -> Vec<String> {
    let text = std::fs::read_to_string(repo("tests/fuzz/corpus/when/seeds.txt")).unwrap();
    let mut seeds: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    // Every condition of the shipped pack.
    let pack = std::fs::read_to_string(repo("rules/comms-lead.yaml")).unwrap();
    seeds.extend(pack.lines().filter_map(|l| l.trim().strip_prefix("when: ")).filter(|w| !w.starts_with(['>', '|'])).map(|w| w.trim_matches('\'').to_string()));
    seeds
}

/// Tokens the mutator inserts: YAML structure, expression syntax, template syntax, and
/// values at the edges of what the loaders accept.
const DICTIONARY: &[&str] = &[
    "(", ")", "[", "]", "{", "}", ":", ": ", "- ", "\n", "\n  ", "  ", ",", "'", "\"", "\\", "#", "&a ", "<<: ", "!!str ", "---\n", "~",
    "not ", " and ", " or ", " if ", " else ", " is defined", " is not none", " in ", ".", "|", "**", "//", "%", "-", "+", "==", "<=",
    "incident.", "subject.", "sli", "objective", "duration(\"", "duration(\"15m\")", "now", "none", "true", "1e308", "-1", "NaN", "0",
    "{{ ", " }}", "{% ", " %}", "{% for i in range(1000) %}", "{% endfor %}", "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    " | percent", " | duration", "0s", "1ms", "292y", "99999999999h", "x3", "x100000", "_", "${HOME}", "${UNSET_FUZZ_VAR}", "\t", "\u{0}",
    "é", "\u{FEFF}", "interval: ", "for: ", "every: ", "when: ", "query: ", "value: ", "action: ", "severity: ", "notify: [",
];

#[derive(Clone, Debug)]
enum Mutation {
    /// Replaces the byte at a position.
    Byte(usize, u8),
    /// Deletes up to `len` bytes at a position.
    Delete(usize, usize),
    /// Copies a range right after itself.
    Duplicate(usize, usize),
    /// Inserts a dictionary token `times` times at a position.
    Insert(usize, usize, usize),
    /// Keeps only the bytes before a position.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Byte(a, b)),
        (any::<usize>(), 1..64usize).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), 1..256usize).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        (any::<usize>(), 0..DICTIONARY.len(), prop_oneof![3 => 1..4usize, 1 => 4..600usize]).prop_map(|(a, t, n)| Mutation::Insert(a, t, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(seed: &str, mutations: &[Mutation]) -> String {
    let mut b = seed.as_bytes().to_vec();
    for m in mutations {
        let at = |p: usize, b: &Vec<u8>| p % (b.len() + 1);
        match *m {
            Mutation::Byte(p, v) if !b.is_empty() => {
                let i = p % b.len();
                b[i] = v;
            }
            Mutation::Byte(..) => {}
            Mutation::Delete(p, n) => {
                let i = at(p, &b);
                let j = (i + n).min(b.len());
                b.drain(i..j);
            }
            Mutation::Duplicate(p, n) => {
                let i = at(p, &b);
                let j = (i + n).min(b.len());
                let chunk = b[i..j].to_vec();
                b.splice(j..j, chunk);
            }
            Mutation::Insert(p, t, n) => {
                let i = at(p, &b);
                let token = DICTIONARY[t].repeat(n);
                b.splice(i..i, token.into_bytes());
            }
            Mutation::Truncate(p) => {
                let i = at(p, &b);
                b.truncate(i);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn cases() -> u32 {
    std::env::var("HERALD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn config() -> Config {
    Config { cases: cases(), failure_persistence: Some(Box::new(FileFailurePersistence::Off)), ..Config::default() }
}

/// A diagnostic line must be `path:line:col: message` for the file it is about.
fn assert_located(diag: &str, path: &str) {
    let rest = diag.strip_prefix(path).and_then(|r| r.strip_prefix(':')).unwrap_or_else(|| panic!("not located in {path}: {diag}"));
    let mut parts = rest.splitn(3, ':');
    let (line, col) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    assert!(line.parse::<u64>().is_ok() && col.parse::<u64>().is_ok(), "not path:line:col: {diag}");
}

fn pack_scope() -> Scope {
    let signals = ["sli", "objective", "affected_ratio", "burn_rate", "tickets", "tickets_baseline", "security", "customer_facing"];
    Scope { signals: signals.iter().map(|s| s.to_string()).collect(), subject_labels: vec!["service".into()] }
}

/// Compiles a condition and, when it compiles, evaluates it with values, with nothing known,
/// and with an open incident.
fn exercise_when(src: &str) {
    let scope = pack_scope();
    match compile(src, &scope) {
        Ok(e) => {
            let n = scope.signals.len();
            let incident = IncidentView { open: true, id: Some("INC-1"), age: Some(900.0), public_updates: Some(0.0), ..IncidentView::NONE };
            for (signals, incident) in [
                (vec![Some(0.5); n], IncidentView::NONE),
                (vec![None; n], IncidentView::NONE),
                (vec![Some(f64::NAN), Some(0.0), Some(-1.0), Some(1e308), None, Some(3.0), Some(0.0), Some(1.0)], incident),
            ] {
                let _ = e.truth(&Ctx { signals: &signals, subject: &["checkout"], incident: &incident, now: 1.7e9 });
            }
        }
        Err(e) => assert!(e.offset <= src.len(), "offset {} past the end of {src:?}", e.offset),
    }
}

#[test]
fn seeds_are_valid_inputs() {
    // The unmutated corpus loads cleanly, so mutations start from deep, meaningful inputs.
    let r = parse_rule_sources(&[("features.yaml".into(), rule_seeds().remove(0))]);
    assert!(r.is_ok(), "{:?}", r.err());
    for (i, seed) in config_seeds().into_iter().enumerate() {
        let dir = config_dir(&seed);
        let r = load_config(&dir.path().join("herald.yaml"), &|_| None);
        assert!(r.is_ok(), "config seed {i}: {:?}", r.err());
    }
    for seed in test_seeds() {
        yaml::parse::<TestFile>("t.yaml", &seed).unwrap();
    }
    for w in when_seeds() {
        compile(&w, &pack_scope()).unwrap_or_else(|e| panic!("{w}: {e:?}"));
    }
}

/// The rule file next to the fuzzed configs (small: the rule-file target covers rules).
const CONFIG_RULES: &str = "groups:
  - name: g
    subject: [service]
    signals:
      sli: { query: 'min by (service) (sli)' }
      tickets: { ticket_source: support }
    rules:
      - { name: R, when: sli < 0.9 and tickets > 1, action: activate_comms_lead, notify: [comms-lead] }
";

/// A directory holding `herald.yaml` (the input), a small `rules.yaml`, and the secret files
/// the seeds name.
fn config_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.yaml"), text).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), CONFIG_RULES).unwrap();
    std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
    std::fs::write(dir.path().join("secret"), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    dir
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn when_conditions_never_panic(seed in any::<prop::sample::Index>(), mutations in prop::collection::vec(mutation(), 0..6)) {
        let seeds = when_seeds();
        let src = mutate(&seeds[seed.index(seeds.len())], &mutations);
        exercise_when(&src);
    }

    #[test]
    fn rule_files_never_panic(seed in any::<prop::sample::Index>(), mutations in prop::collection::vec(mutation(), 0..6)) {
        let seeds = rule_seeds();
        let text = mutate(&seeds[seed.index(seeds.len())], &mutations);
        if let Err(diags) = parse_rule_sources(&[("fuzz.yaml".into(), text)]) {
            prop_assert!(diags.has_errors());
            for d in diags.errors() {
                assert_located(&d.to_string(), "fuzz.yaml");
            }
        }
    }

    #[test]
    fn configs_never_panic(seed in any::<prop::sample::Index>(), mutations in prop::collection::vec(mutation(), 0..6)) {
        let seeds = config_seeds();
        let text = mutate(&seeds[seed.index(seeds.len())], &mutations);
        // A glob across directories would walk whatever a mutation names; not what is tested.
        prop_assume!(!["**", "/*", "*/", "/?", "?/"].iter().any(|g| text.contains(g)));
        let dir = config_dir(&text);
        let path = dir.path().join("herald.yaml");
        if let Err(diags) = load_config(&path, &|_| None) {
            prop_assert!(diags.has_errors());
            for d in diags.errors() {
                let d = d.to_string();
                // Errors about the config itself are located in it; others name the rule file.
                if d.starts_with(&path.display().to_string()) {
                    assert_located(&d, &path.display().to_string());
                }
            }
        }
    }
}

proptest! {
    // Each case runs the whole test driver: a quarter of the cases keeps it to seconds.
    #![proptest_config(Config { cases: (cases() / 4).max(16), ..config() })]

    #[test]
    fn test_files_never_panic(seed in any::<prop::sample::Index>(), mutations in prop::collection::vec(mutation(), 0..6)) {
        let seeds = test_seeds();
        let text = mutate(&seeds[seed.index(seeds.len())], &mutations);
        match yaml::parse::<TestFile>("fuzz.yaml", &text) {
            Ok(parsed) => {
                let file = &parsed.value;
                if let Some(d) = &file.evaluation_interval {
                    let _ = d.value.parse::<PromDuration>();
                }
                for t in &file.tests {
                    for d in t.interval.iter().chain(t.expect.iter().map(|e| &e.at)) {
                        let _ = d.value.parse::<PromDuration>();
                    }
                    for input in &t.input {
                        for s in input.signals.values() {
                            // Expansion itself is bounded by the test driver; parse what
                            // stays small here.
                            if s.value.len() < 200 && !s.value.split(['x', 'X']).skip(1).any(|n| n.trim_start_matches(|c: char| !c.is_ascii_digit()).len() > 5) {
                                let _ = herald::testing::parse_series(&s.value);
                            }
                        }
                    }
                }
            }
            Err(d) => assert_located(&d.to_string(), "fuzz.yaml"),
        }
        // The whole driver, on inputs whose series stay short enough to run quickly.
        let long_series = regex::Regex::new(r"[xX]\s*\d{4,}").unwrap();
        if !long_series.is_match(&text) && !text.contains(['*', '?']) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("rules.yaml"), std::fs::read_to_string(repo("rules/comms-lead.yaml")).unwrap()).unwrap();
            let path = dir.path().join("fuzz.yaml");
            std::fs::write(&path, &text).unwrap();
            match herald::testing::run_file(&path) {
                Ok(_) => {}
                Err(herald::testing::FileError::Invalid(diags) | herald::testing::FileError::Unreadable(diags)) => {
                    for d in diags.errors() {
                        let d = d.to_string();
                        if d.starts_with(&path.display().to_string()) {
                            assert_located(&d, &path.display().to_string());
                        }
                    }
                }
            }
        }
    }
}
