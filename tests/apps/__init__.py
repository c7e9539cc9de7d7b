"""Small Flask apps that tests run in their own processes."""
