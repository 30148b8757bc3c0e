#[buttress::resilient(policy = 7)]
async fn numeric_policy() -> Result<(), buttress::BoxError> {
    Ok(())
}

#[buttress::resilient(policy = "api", retries = 3)]
async fn unknown_argument() -> Result<(), buttress::BoxError> {
    Ok(())
}

fn main() {}
