"""Storage: models, engine and session handling, dialect differences, migrations."""
