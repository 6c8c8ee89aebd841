//! Profile helper: batched greedy decode on an installed model (argv[1], default smollm2), batch argv[2]
//! (default 16), with the GGUF's quantized kernels when argv[3] is `q`.
use pke::io::checkpoint::Checkpoint;
use std::time::Instant;

fn main() -> pke::Result<()> {
    let m = std::env::args().nth(1).unwrap_or_else(|| "smollm2".into());
    let b: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let quant = std::env::args().nth(3).is_some_and(|s| s == "q");
    let mut ck = Checkpoint::open(&m)?;
    if quant {
        ck.attach_quantized()?;
    }
    let ids: Vec<u32> = (0..512u32).map(|i| 100 + (i * 7919) % 5000).collect();
    let prompts: Vec<Vec<u32>> = (0..b).map(|r| ids[r * 16..r * 16 + 16].to_vec()).collect();
    let opts = pke::generate::GenOpts { max_new_tokens: 64, ..Default::default() };
    for _ in 0..3 {
        let t = Instant::now();
        let g = pke::generate::generate(&ck.model, &prompts, 0, &opts)?;
        let n: usize = g.iter().map(|x| x.token_ids.len()).sum();
        println!("{:.1} tok/s", n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(())
}
