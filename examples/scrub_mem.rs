//! Measures the resident memory the content filter costs (built-in detectors, 200 messages):
//! `cargo run --release --example scrub_mem`. Used to keep the filter's automata small.

fn rss_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with("RssAnon")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}
fn main() {
    let before = rss_kb();
    let sc = herald::notify::Scrubber::new(&herald::notify::ScrubConfig::default()).unwrap();
    let built = rss_kb();
    for i in 0..200 {
        let text = format!("svc-{i:04} is failing for 12% of customers: SLI 95.0% is below its 99.9% objective. Incident INC-{i} is open. https://herald.example.com/api/v1/incidents/INC-{i} since 2026-11-23T01:02:03Z");
        let _ = sc.scrub_str(&text);
    }
    let used = rss_kb();
    println!("anon KB: start {before}, after build {built} (+{}), after 200 scrubs {used} (+{})", built - before, used - built);
}
