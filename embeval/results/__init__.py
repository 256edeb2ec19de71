"""What an evaluation leaves behind: partial statistics of shards (:mod:`.partials`, checked by
:mod:`.partial_checks`) and the result files (:mod:`.writers`)."""
