"""What is replayed: seeded input sets (`seeded`) and folders of real samples (`samples`)."""
