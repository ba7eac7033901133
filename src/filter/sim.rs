//! Deterministic simulation of the claims protocol: the real state machine (`Filter`) on
//! several fake replicas (each its own worker, lease and map) sharing one fake etcd (leases end
//! on the shared clock) or, without etcd, one Envoy's shared data; a fake registry that stores
//! whatever it is sent and records every stored write. A seeded scheduler picks, step by step:
//! a client's next move (headers, all but the last byte, the last byte, one of its calls
//! answered, vanishing), a replica's root tick, an orphaned write answered, a replica killed
//! (SIGKILL: its state gone, its lease left to run out), time passing (a pause). Clocks: in
//! etcd mode each replica's clock is off the true one by up to 20 s either way (skew), and a
//! replica's clock may step back (in shared data, the one Envoy's, every worker's); at most
//! 25 s back in all (a step back of half the TTL or more while a push is in flight is a named
//! limit, see `filter::claims`). Drawn from a second generator, so a seed's schedule of moves
//! is the one it had before clocks were added.
//!
//! The oracle is the registry's history of the tag: its first stored digest, then changes only
//! by a break-glass override logged when it was decided (`current -> pushed`, each decision
//! justifying one change at most). `SIM_SEED=<n>` replays one schedule; `SIM_SCHEDULES=<n>`
//! runs that many (`make sim`). Seen to catch each of: the rule without its committed-change
//! check (seed 332), holders not counted (seed 964), claim answers trusted at any age (2639).
//! Issue 27's six sequences are fixed schedules in `tests_claims`. Found two holes, fixed: a
//! write landing after its claim expired (seed 5619), a view judged after the claim of a write
//! whose writer died uncommitted expired (seed 111888).
use super::fake::FakeHost;
use super::host::Host;
use super::tests_claims::{answer_orphan, deliver, sha, Replica, Stream, World, ADMIN, BOB, ETCD_BG, REASON};
use std::collections::HashMap;

/// A small, seeded, well-mixed generator (SplitMix64): no dependency, the same on every host.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SHARED_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]}}"#;

fn manifest(n: usize) -> Vec<u8> {
    format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","n":{n}}}"#).into_bytes()
}

struct Client {
    rep: usize,
    body: Vec<u8>,
    admin: bool,
    /// 0: not opened; 1: headers sent; 2: all but the last byte; 3: body complete; 4: over.
    phase: u8,
    stream: Option<Stream>,
}

/// One schedule; `Err`: the oracle's complaint.
pub fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed);
    let etcd = rng.below(3) != 0;
    let world = World::new(if etcd { ETCD_BG } else { SHARED_BG });
    let n_replicas = if etcd { 2 + rng.below(2) } else { 1 + rng.below(3) };
    let mut replicas: Vec<Replica> = (0..n_replicas).map(|_| world.replica()).collect();
    let mut clocks = Rng(seed ^ 0x5eed_c10c_4a11_0000);
    let mut stepped: i64 = 0;
    let mut trace: Vec<String> = Vec::new();
    if etcd {
        for (i, r) in replicas.iter().enumerate() {
            let skew = [0, 0, 5_000, -5_000, 20_000, -20_000][clocks.below(6)];
            r.root.clock_offset.set(skew);
            trace.push(format!("r{i} clock {skew:+} ms"));
        }
    }
    let digests: Vec<Vec<u8>> = (0..3).map(manifest).collect();
    let mut clients: Vec<Client> = Vec::new();
    // Streams whose client left, with a write in flight: (replica, stream).
    let mut orphans: Vec<(usize, Stream)> = Vec::new();
    // Every host a stream ran on (their logs hold the override decisions).
    let mut hosts: Vec<FakeHost> = Vec::new();
    for _ in 0..(20 + rng.below(60)) {
        let r = rng.below(100);
        if r < 8 && clients.len() < 8 {
            let (rep, d, admin) = (rng.below(n_replicas), rng.below(3), rng.below(4) == 0);
            trace.push(format!("client {} on r{rep}: {} {}", clients.len(), if admin { "admin" } else { "bob" }, d));
            clients.push(Client { rep, body: digests[d].clone(), admin, phase: 0, stream: None });
        } else if r < 70 && !clients.is_empty() {
            let i = rng.below(clients.len());
            let c = &mut clients[i];
            if c.phase >= 4 || replicas[c.rep].dead {
                continue;
            }
            let moves = rng.below(10);
            trace.push(format!("client {i} phase {} move {moves}", c.phase));
            match (c.phase, moves) {
                (0, _) => {
                    let headers: Vec<(&str, &str)> = if c.admin { vec![ADMIN, REASON] } else { vec![BOB] };
                    c.stream = Some(world.open_put(&replicas[c.rep], "v1", &c.body, &headers));
                    c.phase = 1;
                }
                (_, 0) => {
                    // The client leaves: a write in flight is the root's now.
                    if let Some(mut s) = c.stream.take() {
                        s.f.on_done(&s.h);
                        let puts: Vec<u32> = s.h.pending.borrow().iter().copied().filter(|t| s.h.call_of(*t).header(":method") == Some("PUT")).collect();
                        s.h.pending.borrow_mut().clear();
                        s.held_puts = puts;
                        if !s.held_puts.is_empty() {
                            orphans.push((c.rep, s));
                        } else {
                            hosts.push(s.h);
                        }
                    }
                    c.phase = 4;
                }
                (1, 1..=3) => {
                    let s = c.stream.as_mut().unwrap();
                    let cut = c.body.len() - 1;
                    world.body(s, &c.body[..cut], false);
                    c.phase = 2;
                }
                (1 | 2, 4..=5) => {
                    let s = c.stream.as_mut().unwrap();
                    let have = s.h.body.borrow().len();
                    world.body(s, &c.body[have..], true);
                    c.phase = 3;
                }
                _ => {
                    // One of its calls answered.
                    let s = c.stream.as_mut().unwrap();
                    let next = s.h.pending.borrow_mut().pop_front();
                    if let Some(token) = next {
                        let call = s.h.call_of(token);
                        let reply = if call.cluster == "etcd" { world.etcd.answer(&call) } else { world.reg.answer(&call) };
                        deliver(s, token, reply);
                    }
                    if !s.h.replies.borrow().is_empty() {
                        c.phase = 4;
                        hosts.push(c.stream.take().unwrap().h);
                    }
                }
            }
        } else if r < 80 {
            let i = rng.below(n_replicas);
            trace.push(format!("tick r{i}"));
            world.tick(&replicas[i]);
        } else if r < 86 && !orphans.is_empty() {
            let i = rng.below(orphans.len());
            let (rep, mut s) = orphans.swap_remove(i);
            trace.push(format!("orphan write answered (r{rep})"));
            if replicas[rep].dead {
                // The request reached the registry; nobody hears the answer.
                let token = s.held_puts.remove(0);
                world.reg.answer(&s.h.call_of(token));
            } else {
                answer_orphan(&world, &replicas[rep], &mut s);
            }
            hosts.push(s.h);
        } else if r < 88 && n_replicas > 1 {
            let i = rng.below(n_replicas);
            if !replicas[i].dead {
                trace.push(format!("kill r{i}"));
                replicas[i].dead = true;
                // Its streams are gone with it (no callback); writes it sent may still land.
                for c in clients.iter_mut().filter(|c| c.rep == i && c.phase < 4) {
                    c.phase = 4;
                    if let Some(mut s) = c.stream.take() {
                        let puts: Vec<u32> = s.h.pending.borrow().iter().copied().filter(|t| s.h.call_of(*t).header(":method") == Some("PUT")).collect();
                        s.h.pending.borrow_mut().clear();
                        s.held_puts = puts;
                        if s.held_puts.is_empty() {
                            hosts.push(s.h);
                        } else {
                            orphans.push((i, s));
                        }
                    }
                }
            }
        } else {
            let ms = [0, 100, 1_000, 5_000, 20_000, 45_000][rng.below(6)];
            trace.push(format!("time +{ms} ms"));
            let back = [1_000, 5_000, 10_000, 20_000][clocks.below(4)];
            if clocks.below(4) == 0 && stepped + back <= 25_000 {
                stepped += back;
                // One machine's clock steps back: a replica's (etcd), or the one Envoy's.
                let i = clocks.below(n_replicas);
                trace.push(format!("clock of {} steps back {back} ms", if etcd { format!("r{i}") } else { "the Envoy".into() }));
                for (_, r) in replicas.iter().enumerate().filter(|(j, _)| !etcd || *j == i) {
                    r.root.clock_offset.set(r.root.clock_offset.get() - back);
                }
            }
            // The registry answers a write within the write timeout (Envoy's, else 504): every
            // write that would outlive it lands first, then time passes.
            let due = world.clock.now_ms() + ms;
            for c in clients.iter_mut() {
                let Some(s) = c.stream.as_mut() else { continue };
                let puts: Vec<u32> = s.h.pending.borrow().iter().copied().filter(|t| landing(&s.h, *t, due)).collect();
                for t in puts {
                    s.h.pending.borrow_mut().retain(|x| *x != t);
                    let reply = world.reg.answer(&s.h.call_of(t));
                    deliver(s, t, reply);
                }
                if !s.h.replies.borrow().is_empty() {
                    c.phase = 4;
                    hosts.push(c.stream.take().unwrap().h);
                }
            }
            let (late, kept): (Vec<_>, Vec<_>) = orphans.drain(..).partition(|(_, s)| s.held_puts.first().is_some_and(|t| landing(&s.h, *t, due)));
            orphans = kept;
            for (rep, mut s) in late {
                if replicas[rep].dead {
                    let token = s.held_puts.remove(0);
                    world.reg.answer(&s.h.call_of(token));
                } else {
                    answer_orphan(&world, &replicas[rep], &mut s);
                }
                hosts.push(s.h);
            }
            world.advance(ms);
        }
        if std::env::var("SIM_TRACE").is_ok() {
            let last = trace.last().cloned().unwrap_or_default();
            let slots: Vec<String> = world.clock.process.shared.borrow().values().flat_map(|(v, _)| crate::claims::Slot::decode(v).records).map(|r| r.rec.encode()).collect();
            eprintln!("{:>8} {last:<32} etcd={:?} shared={slots:?} reg={:?}", world.clock.now_ms() - 1_000_000, world.etcd.value("/immutable-tags/app:v1"), world.reg.holds("v1").map(|d| d[7..13].to_string()));
        }
        check(&world, &hosts, &clients, &orphans).map_err(|e| format!("{e}\nseed {seed}, after:\n  {}", trace.join("\n  ")))?;
    }
    Ok(())
}

/// Whether `token` is a PUT that must have landed by `due` (its write timeout, 30 s).
fn landing(h: &FakeHost, token: u32, due: u64) -> bool {
    let c = h.call_of(token);
    c.header(":method") == Some("PUT") && c.at_ms + 30_000 <= due
}

/// The oracle: every change of the tag's digest was an override decided (and logged) for
/// exactly that change.
fn check(world: &World, hosts: &[FakeHost], clients: &[Client], orphans: &[(usize, Stream)]) -> Result<(), String> {
    let mut decisions: HashMap<(String, String), usize> = HashMap::new();
    let live = clients.iter().filter_map(|c| c.stream.as_ref()).chain(orphans.iter().map(|(_, s)| s));
    for h in hosts.iter().chain(live.map(|s| &s.h)) {
        for (_, l) in h.logs.borrow().iter() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else { continue };
            if v["event"] == "immutable_tags.break_glass_decision" && v["tag"] == "v1" {
                let key = (v["current_digest"].as_str().unwrap_or("").to_string(), v["pushed_digest"].as_str().unwrap_or("").to_string());
                *decisions.entry(key).or_default() += 1;
            }
        }
    }
    let mut current: Option<String> = None;
    for (tag, d) in world.reg.history.borrow().iter() {
        if tag != "v1" {
            continue;
        }
        if let Some(c) = &current {
            if c != d {
                let n = decisions.entry((c.clone(), d.clone())).or_default();
                if *n == 0 {
                    return Err(format!("v1 changed {c} -> {d} without an override decided for it; history {:?}", world.reg.history.borrow()));
                }
                *n -= 1;
            }
        }
        current = Some(d.clone());
    }
    Ok(())
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn the_six_sequences_digests_are_distinct() {
    // The simulator's manifests hash apart (a collision would hide a change from the oracle).
    let d: Vec<String> = (0..3).map(|n| sha(&manifest(n))).collect();
    assert!(d[0] != d[1] && d[1] != d[2] && d[0] != d[2]);
}

/// Thousands of schedules; `SIM_SEED` replays one, `SIM_SCHEDULES` and `SIM_FIRST` run more.
#[test]
fn random_schedules_never_change_an_immutable_tag_without_an_override() {
    if let Some(seed) = env("SIM_SEED") {
        if let Err(e) = run(seed) {
            panic!("{e}");
        }
        return;
    }
    let first = env("SIM_FIRST").unwrap_or(0);
    let n = env("SIM_SCHEDULES").unwrap_or(2_000);
    for seed in first..first + n {
        if let Err(e) = run(seed) {
            panic!("{e}\nreplay: SIM_SEED={seed} cargo test --lib sim::");
        }
    }
    if std::env::var("SIM_REPORT").is_ok() {
        println!("sim: seeds {first}..{} passed", first + n);
    }
}
