{#- Keys of the rows deleted at a database source in the watermark range (:after, :upto]:
    a deleted-rows table (or query) with its own watermark, or the source's tombstoned rows.
    Only the key columns are read (patient identifier, dataset, visit), never the rows' values.
    Rendered by mipflow.node.ingest.database; every name is already quoted for the source's dialect. -#}
SELECT {{ columns }}
FROM {{ relation }} AS src
WHERE {{ watermark }} <= :upto
{%- if has_after %}
  AND {{ watermark }} > :after
{%- endif %}
{%- if tombstone %}
  AND COALESCE({{ tombstone }}, FALSE) = TRUE
{%- endif %}
