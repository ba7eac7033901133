//! Checks policy files with the filter's own parser: `check_policy FILE...` prints each file's
//! effective policy or its error (naming field and value), and exits 1 if any is invalid.
//! The tests feed it every policy embedded in envoy/, so examples never drift from the product.
use immutable_tags::config::Config;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut ok = true;
    for path in std::env::args().skip(1) {
        match std::fs::read(&path) {
            Ok(bytes) => match Config::from_json(&bytes) {
                Ok(c) => println!("ok {path}: {}", c.summary()),
                Err(e) => {
                    ok = false;
                    println!("invalid {path}: {e}");
                }
            },
            Err(e) => {
                ok = false;
                println!("unreadable {path}: {e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
