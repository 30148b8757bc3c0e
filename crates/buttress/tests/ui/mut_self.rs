struct Counter(u32);

impl Counter {
    #[buttress::resilient(policy = "api")]
    async fn bump(&mut self) -> Result<u32, buttress::BoxError> {
        self.0 += 1;
        Ok(self.0)
    }
}

fn main() {}
