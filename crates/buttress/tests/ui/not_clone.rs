struct Token;

#[buttress::resilient(policy = "api")]
async fn send(token: Token) -> Result<(), buttress::BoxError> {
    let _ = token;
    Ok(())
}

fn main() {}
