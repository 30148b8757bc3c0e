#[buttress::resilient(policy = "api")]
async fn sum((a, b): (u32, u32)) -> Result<u32, buttress::BoxError> {
    Ok(a + b)
}

fn main() {}
