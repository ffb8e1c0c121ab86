//! A WASI preview 2 command component: greets, shows its arguments and GREETING.

fn main() {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
    println!("{greeting} from a wasi:cli/command component");
    println!("args: {:?}", std::env::args().skip(1).collect::<Vec<_>>());
}
