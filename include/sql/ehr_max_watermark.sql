{#- The highest watermark a database source holds now: the upper bound of the next extraction.
    Rendered by mipflow.node.ingest.database; every name is already quoted for the source's dialect. -#}
SELECT MAX({{ watermark }}) AS upto
FROM {{ relation }} AS src
