//! `dbn-cut SRC DST FROM TO`: the trades of a DBN TRADES file received in the fractions
//! `[FROM, TO)` of its time range, as a file of their own (for the benchmark's overlap runs).

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, src, dst, from, to] = args.as_slice() else {
        eprintln!("usage: dbn-cut SRC DST FROM TO (fractions of the file's range, 0 to 1)");
        std::process::exit(2);
    };
    let fraction = |s: &str| -> f64 {
        s.parse().unwrap_or_else(|_| {
            eprintln!("dbn-cut: {s} is not a fraction");
            std::process::exit(2)
        })
    };
    let (start, end) = tradebars_tests::range_of(Path::new(src));
    let at = |f: f64| start + ((end - start) as f64 * f) as u64;
    let kept = tradebars_tests::cut_file(
        Path::new(src),
        Path::new(dst),
        at(fraction(from)),
        at(fraction(to)),
        false,
    );
    println!("{dst}: {kept} trades");
}
