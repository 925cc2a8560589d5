"""What finished runs show a person: summary tables, samples, loss curves and comparison plots."""
