"""What the document pipeline's stages share: the database pool, staging
(intermediate data by task run), the knowledge-base store, observed stage
rates, and the base every pipeline stage handler builds on."""
