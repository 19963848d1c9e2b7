-- The vectors of multilingual-e5-small (the local multilingual model, 384 dimensions) get their
-- own partial HNSW index, as every model does: a tenant's chunks embedded with one model are
-- searched only with questions embedded by the same model, and a model switch re-embeds chunks
-- while the old model's rows stay searchable through their own index.
create index chunks_embedding_e5small on chunks
    using hnsw ((embedding::vector(384)) vector_cosine_ops) where embedding_model = 'multilingual-e5-small';
