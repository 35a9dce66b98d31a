"""ExpW on disk to faces in memory: `label.lst` parsing, the one crop path, the crop cache, the
grouped split, `data check`, and the synthetic ExpW-format generator.
"""
