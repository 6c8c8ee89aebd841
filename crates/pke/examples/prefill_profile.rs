//! Profile helper: repeated 64-token forward passes on an installed model (argv[1], default smollm2).
use pke::io::checkpoint::Checkpoint;
use pke::model::Input;
use std::time::Instant;

fn main() -> pke::Result<()> {
    let m = std::env::args().nth(1).unwrap_or_else(|| "smollm2".into());
    let n: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let ck = Checkpoint::open(&m)?;
    let ids: Vec<u32> = (0..n as u32).map(|i| 100 + (i * 7919) % 5000).collect();
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..10 {
            let h = ck.model.forward(&Input::single(&ids))?;
            ck.model.last_logits(&h)?;
        }
        println!("{:.4} s per forward", t.elapsed().as_secs_f64() / 10.0);
    }
    Ok(())
}
