#[derive(Debug)]
struct MyError;

#[buttress::resilient(policy = "api")]
async fn call() -> Result<(), MyError> {
    Ok(())
}

fn main() {}
